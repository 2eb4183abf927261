"""``GET /openapi.json``: the OpenAPI 3.1 document of the HTTP API, as implemented.

:func:`document` builds it once per version and caches it; the schemas live in
:mod:`payflow.web.openapi_schemas`. Each operation below lists the answers its handler and the
middleware can give: its own, then those every operation shares (401 without a valid API key
unless the route is open, 413 for a body over the limit, 500, 503 while the server stops) and,
for every ``POST /v1/...``, those of ``Idempotency-Key``. ``tests/test_openapi.py`` checks that
the document and the app's routes match both ways and runs schemathesis against the app.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from aiohttp import web

from payflow import __version__, metrics, operations
from payflow.models import ALL_EVENT_TYPES, PaymentStatus
from payflow.web.openapi_schemas import headers, parameters, ref, schemas
from payflow.web.params import MAX_PAGE_LIMIT, MIN_PAGE_LIMIT
from payflow.web.problems import JSON_CONTENT_TYPE, PROBLEM_CONTENT_TYPE, dumps
from payflow.webhooks.admin import RECOVER_DEFAULT_HOURS

PATH: Final = "/openapi.json"
OPENAPI_VERSION: Final = "3.1.0"
Doc = dict[str, Any]
# status -> the problems (one line each) an operation answers with that status
Errors = dict[int, list[str]]

_BEARER: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}]
_INVALID_JSON: Final = ("invalid_json: the body is empty or not JSON (NaN, Infinity and "
                        "over-long numbers included); invalid_body: it is not a JSON object.")


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, _serve)


async def _serve(request: web.Request) -> web.Response:
    return web.Response(body=_body(__version__), content_type=JSON_CONTENT_TYPE)


@functools.cache
def _body(version: str) -> bytes:
    return dumps(document(version))


@functools.cache
def document(version: str) -> Doc:
    """The OpenAPI document (cached: do not modify it)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "PayFlow API", "version": version, "description": _DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": name, "description": text} for name, text in _TAGS.items()],
        "security": _BEARER,
        "paths": _paths(),
        "components": {
            "schemas": schemas(),
            "headers": headers(),
            "parameters": parameters(),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Authorization: Bearer <secret> with a configured API key. "
                               "When the server has no API key configured the API is open."}},
        },
    }


_DESCRIPTION: Final = """\
An asynchronous payment gateway: a payment is accepted (202) once its job is queued, and a
consumer takes it to succeeded or failed and sends signed webhooks.

Every response carries a `Request-Id` header. Every error is an RFC 9457 problem
(`application/problem+json`) with a stable `code`; validation errors name the offending field
in `param`. A path that matches no route is 404 `not_found`; a method the path does not have is
405 `method_not_allowed` with `Allow`. A request that declares a body over the server's limit is
413 before the body is read. While the server shuts down every request but `GET /healthz` is
503 `shutting_down` with `Retry-After`."""

_TAGS: Final = {
    "payments": "Create, list, read and cancel payments.",
    "refunds": "Refund a succeeded payment, in full or in parts.",
    "webhook_endpoints": "Where webhooks go, their secrets, and recovering missed ones.",
    "events": "What webhooks carry, their delivery attempts, and re-delivery.",
    "queues": "Queue depths, processing rates, daemons and dead letters (the dashboard's "
              "data; `payflow status` and `payflow dead` show the same).",
    "dashboard": "The operator's page: open without a key; its data comes from the API.",
    "operations": "Health, readiness, metrics and this document.",
}


# --- responses -------------------------------------------------------------------------------


def _header_refs(*names: str, retry_after_optional: bool = False) -> Doc:
    refs = {name: {"$ref": f"#/components/headers/{name}"} for name in ("Request-Id", *names)}
    if retry_after_optional:
        refs["Retry-After"] = {"$ref": "#/components/headers/Retry-After-Optional"}
    return refs


def _json(schema: str | Doc, description: str, *extra_headers: str) -> Doc:
    return {"description": description, "headers": _header_refs(*extra_headers),
            "content": {JSON_CONTENT_TYPE: {
                "schema": ref(schema) if isinstance(schema, str) else schema}}}


def _problem(status: int, lines: list[str], *, replayable: bool) -> Doc:
    extra = []
    if status == 401:
        extra.append("WWW-Authenticate")
    if status == 503:
        extra.append("Retry-After")
    if replayable and status in (404, 409):
        extra.append("Idempotent-Replayed")
    in_flight = any(line.startswith("idempotency_request_in_flight") for line in lines)
    return {"description": "\n".join(f"- {line}" for line in lines),
            "headers": _header_refs(*extra, retry_after_optional=in_flight),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": ref("Problem")}}}


def _idempotency_errors() -> Errors:
    return {
        400: ["invalid_idempotency_key: a malformed Idempotency-Key, or more than one; "
              "idempotency_key_required: none, and the server requires one."],
        409: ["idempotency_request_in_flight: a request with this key still runs "
              "(Retry-After)."],
        422: ["idempotency_key_reused: the key was used with another request (method, path "
              "or body)."],
        503: ["idempotency_unavailable: the key store does not answer; nothing was done."],
    }


def _operation(op_id: str, summary: str, tag: str, ok: dict[int, Doc], errors: Errors, *,
               params: tuple[str, ...] = (), query: tuple[Doc, ...] = (),
               body: Doc | None = None,
               security: list[dict[str, list[str]]] | None = None,
               idempotent_post: bool = False, always_open: bool = False) -> Doc:
    """An operation; adds the answers of the middleware and, for ``POST /v1/...``,
    ``Idempotency-Key``."""
    errors = {status: list(lines) for status, lines in errors.items()}

    def add(status: int, line: str) -> None:
        errors.setdefault(status, []).append(line)

    if security != []:
        add(401, "missing_api_key: no Authorization header; invalid_api_key: not 'Bearer "
                 "<secret>' or an unknown key.")
    add(413, "payload_too_large: the body is over the server's limit.")
    add(500, "internal_error: an unexpected error (logged with the request id).")
    if not always_open:
        add(503, "shutting_down: the server is stopping.")
    parameter_refs = [{"$ref": f"#/components/parameters/{name}"}
                      for name in ("RequestId", *params)] + list(query)
    ok = dict(ok)
    if idempotent_post:
        parameter_refs.append({"$ref": "#/components/parameters/IdempotencyKey"})
        for status, lines in _idempotency_errors().items():
            errors.setdefault(status, []).extend(lines)
        for answer in ok.values():
            answer["headers"] |= _header_refs("Idempotent-Replayed")
    responses = {str(status): answer for status, answer in ok.items()}
    responses |= {str(status): _problem(status, lines, replayable=idempotent_post)
                  for status, lines in sorted(errors.items())}
    op: Doc = {"operationId": op_id, "summary": summary, "tags": [tag],
               "parameters": parameter_refs}
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = body
    op["responses"] = responses
    return op


def _body_of(schema: str, *, required: bool, description: str) -> Doc:
    return {"required": required, "description": description,
            "content": {JSON_CONTENT_TYPE: {"schema": ref(schema)}}}


def _path_param(name: str, description: str) -> Doc:
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "minLength": 1}, "description": description}


def _time_query(name: str, description: str, status: int) -> Doc:
    return {"name": name, "in": "query", "required": False, "description": (
        f"{description} Anything else is {status} invalid_time."), "schema": {"anyOf": [
            {"type": "string", "pattern": "^[0-9]+$", "description": "Unix seconds."},
            {"type": "string", "format": "date-time"}]}}


# --- paths -----------------------------------------------------------------------------------


def _paths() -> Doc:
    api = {**_payment_paths(), **_endpoint_paths(), **_event_paths(), **_queue_paths()}
    for item in api.values():
        for method in METHODS & item.keys():
            _refuse_unknown_parameters(item[method])
    return {**api, **_dashboard_paths(), **_docs_paths(), **_operation_paths()}


METHODS: Final = frozenset({"get", "post", "patch", "delete"})
_UNKNOWN_PARAMETER: Final = ("unknown_parameter: a query parameter this operation does not "
                             "take (param names it).")


def _refuse_unknown_parameters(op: Doc) -> None:
    """Every ``/v1/`` route answers 400 ``unknown_parameter`` to a query parameter it does not
    take (``web.params.query``)."""
    responses = op["responses"]
    if "400" in responses:
        responses["400"]["description"] += "\n- " + _UNKNOWN_PARAMETER
    else:
        responses["400"] = _problem(400, [_UNKNOWN_PARAMETER], replayable=False)
        op["responses"] = dict(sorted(responses.items()))


def _payment_paths() -> Doc:
    payment_id = [_path_param("payment_id", "The payment's id (pay_...).")]
    not_found = "payment_not_found: no payment has this id."
    statuses = ", ".join(s.value for s in PaymentStatus)
    create = _operation(
        "createPayment", "Create a payment", "payments",
        {202: _json("Payment", "Accepted: the payment is pending and its job is queued.",
                    "Location")},
        {400: [_INVALID_JSON],
         422: ["The first invalid field, named in param: unknown_field, missing, "
               "invalid_type, out_of_range, invalid_currency, invalid_method, "
               "method_mismatch, invalid_vpa, invalid_card_number, card_expired, "
               "invalid_bank_code, invalid_wallet, too_many_keys, invalid_key, too_long."],
         503: ["queue_unavailable: the job could not be queued; nothing was kept."]},
        body=_body_of("PaymentCreate", required=True, description="The payment to make."),
        idempotent_post=True)
    create["requestBody"]["content"][JSON_CONTENT_TYPE]["examples"] = {
        "upi": {"value": {"amount": 1000, "currency": "INR", "method": "upi",
                          "upi": {"vpa": "asha@okbank"}, "metadata": {"order": "A-1001"}}},
        "card": {"value": {"amount": 2500, "currency": "usd", "method": "card",
                           "card": {"number": "4242 4242 4242 4242", "exp_month": 12,
                                    "exp_year": 2040}}},
    }
    listing = _operation(
        "listPayments", "List payments, newest first", "payments",
        {200: _json("PaymentList", "A page of payments.")},
        {400: ["out_of_range (limit), invalid_status (status), invalid_time (created[gte], "
               "created[lte]); param names the parameter."]},
        params=("Limit", "StartingAfter"), query=(
            {"name": "status", "in": "query", "required": False,
             "schema": {"enum": [s.value for s in PaymentStatus]},
             "description": f"Only payments in this status ({statuses})."},
            _time_query("created[gte]", "Created at or after: unix seconds or an ISO-8601 "
                        "time with a zone.", 400),
            _time_query("created[lte]", "Created at or before: unix seconds or an ISO-8601 "
                        "time with a zone.", 400)))
    conflict = ("payment_not_cancelable: the payment is not pending; current_status says "
                "what it is.")
    refund_conflict = ("payment_not_refundable: only a succeeded or partially refunded "
                       "payment with an amount can be refunded; current_status says what it is.")
    return {
        "/v1/payments": {"post": create, "get": listing},
        "/v1/payments/{payment_id}": {"parameters": payment_id, "get": _operation(
            "getPayment", "Read a payment", "payments",
            {200: _json("Payment", "The payment.")}, {404: [not_found]})},
        "/v1/payments/{payment_id}/cancel": {"parameters": payment_id, "post": _operation(
            "cancelPayment", "Cancel a pending payment", "payments",
            {200: _json("Payment", "The canceled payment; its queued job only emits "
                                   "payment.canceled.")},
            {404: [not_found], 409: [conflict]}, idempotent_post=True)},
        "/v1/payments/{payment_id}/refunds": {"parameters": payment_id, "post": _operation(
            "createRefund", "Refund a payment", "refunds",
            {202: _json("Refund", "Accepted: the refund is pending and its job is queued.",
                        "Location")},
            {400: [_INVALID_JSON], 404: [not_found], 409: [refund_conflict],
             422: ["unknown_field, invalid_amount, amount_too_large (param: amount); "
                   "not_refundable, payment_not_found: a concurrent change, retry."],
             503: ["queue_unavailable: the job could not be queued; nothing was kept."]},
            body=_body_of("RefundCreate", required=False,
                          description="Optional; no body refunds everything left."),
            idempotent_post=True),
            "get": _operation("listPaymentRefunds", "List a payment's refunds", "refunds",
                              {200: _json("RefundList", "Every refund, oldest first.")},
                              {404: [not_found]})},
        "/v1/refunds/{refund_id}": {
            "parameters": [_path_param("refund_id", "The refund's id (re_...).")],
            "get": _operation("getRefund", "Read a refund", "refunds",
                              {200: _json("Refund", "The refund.")},
                              {404: ["refund_not_found: no refund has this id."]})},
    }


def _endpoint_paths() -> Doc:
    endpoint_id = [_path_param("id", "The endpoint's id (ep_...).")]
    not_found = "webhook_endpoint_not_found: no endpoint has this id."
    invalid = ("unknown_field, invalid_url, invalid_events, invalid_description, invalid_type "
               "(disabled); param names the field. url_refused (param: url): the URL's host "
               "can only reach addresses webhook delivery refuses (loopback, private, "
               "link-local, cloud metadata, ...); the detail names the address class and how "
               "to allow it ([webhooks] allow_networks).")
    since = _time_query("since", "Replay what failed since then: an ISO-8601 time. Default: "
                        f"{RECOVER_DEFAULT_HOURS} hours ago.", 422)
    since["schema"] = {"type": "string", "format": "date-time"}
    return {
        "/v1/webhook_endpoints": {
            "post": _operation(
                "createWebhookEndpoint", "Create a webhook endpoint", "webhook_endpoints",
                {201: _json("WebhookEndpointCreated", "Created; the secret is shown only "
                                                      "here.", "Location")},
                {400: [_INVALID_JSON], 422: [invalid]}, idempotent_post=True,
                body=_body_of("WebhookEndpointCreate", required=True,
                              description="The endpoint.")),
            "get": _operation("listWebhookEndpoints", "List webhook endpoints",
                              "webhook_endpoints",
                              {200: _json("WebhookEndpointList", "Every endpoint.")}, {}),
        },
        "/v1/webhook_endpoints/{id}": {
            "parameters": endpoint_id,
            "get": _operation("getWebhookEndpoint", "Read a webhook endpoint",
                              "webhook_endpoints",
                              {200: _json("WebhookEndpoint", "The endpoint.")},
                              {404: [not_found]}),
            "patch": _operation(
                "updateWebhookEndpoint", "Update a webhook endpoint", "webhook_endpoints",
                {200: _json("WebhookEndpoint", "The updated endpoint.")},
                {400: [_INVALID_JSON], 404: [not_found + " (checked before the body)"],
                 422: [invalid]},
                body=_body_of("WebhookEndpointUpdate", required=True,
                              description="The fields to change.")),
            "delete": _operation(
                "deleteWebhookEndpoint", "Delete a webhook endpoint", "webhook_endpoints",
                {200: _json("WebhookEndpointDeleted", "Deleted.")}, {404: [not_found]}),
        },
        "/v1/webhook_endpoints/{id}/rotate_secret": {"parameters": endpoint_id, "post": _operation(
            "rotateWebhookEndpointSecret", "Rotate the signing secret", "webhook_endpoints",
            {200: _json("WebhookEndpointRotated", "The new secret; the old ones keep signing "
                                                  "for the rotation grace period.")},
            {404: [not_found]}, idempotent_post=True)},
        "/v1/webhook_endpoints/{id}/recover": {"parameters": endpoint_id, "post": _operation(
            "recoverWebhookEndpoint", "Re-deliver what an endpoint missed", "webhook_endpoints",
            {202: _json("Recovery", "The missed events are queued again.")},
            {404: [not_found],
             409: ["endpoint_disabled: enable the endpoint first."],
             422: ["invalid_time: since is not an ISO-8601 time (param: since)."],
             503: ["queue_unavailable: a webhook job could not be queued."]},
            query=(since,), idempotent_post=True)},
    }


def _event_paths() -> Doc:
    event_id = [_path_param("id", "The event's id (evt_...).")]
    not_found = "event_not_found: no event has this id."
    return {
        "/v1/events": {"get": _operation(
            "listEvents", "List events, newest first", "events",
            {200: _json("EventList", "A page of events.")},
            {400: [f"out_of_range: limit is not {MIN_PAGE_LIMIT}-{MAX_PAGE_LIMIT} (param: "
                   "limit); invalid_type: type is not an event type (param: type)."]},
            params=("Limit", "StartingAfter"),
            query=({"name": "type", "in": "query", "required": False,
                    "description": "Only events of this type.",
                    "schema": {"type": "string", "enum": list(ALL_EVENT_TYPES)}},))},
        "/v1/events/{id}": {"parameters": event_id, "get": _operation(
            "getEvent", "Read an event", "events", {200: _json("Event", "The event.")},
            {404: [not_found]})},
        "/v1/events/{id}/attempts": {"parameters": event_id, "get": _operation(
            "listEventAttempts", "List an event's delivery attempts", "events",
            {200: _json("DeliveryAttemptList", "Every attempt, oldest first.")},
            {404: [not_found]})},
        "/v1/events/{id}/retry": {"parameters": event_id, "post": _operation(
            "retryEvent", "Deliver an event again now", "events",
            {202: _json("EventRetryQueued", "Queued.")},
            {400: [_INVALID_JSON],
             404: [not_found + " (checked before the body)",
                   "webhook_endpoint_not_found: no endpoint has endpoint_id."],
             409: ["endpoint_disabled: enable the endpoint first."],
             422: ["unknown_field, invalid_type (endpoint_id); param names the field."],
             503: ["queue_unavailable: the webhook job could not be queued, or this server "
                   "cannot queue webhook jobs."]},
            body=_body_of("EventRetry", required=False,
                          description="Optional: one endpoint, or every subscribed one."),
            idempotent_post=True)},
    }


def _queue_paths() -> Doc:
    redis = "queue_unavailable: Redis does not answer, or this server offers no queue operations."
    bad_queue = ("missing, unknown_queue: queue is absent or not one of the daemon's queues "
                 "(param: queue)")
    queue = {"name": "queue", "in": "query", "required": True, "schema": {"type": "string"},
             "description": "A queue of the daemon ([queue] payments or webhooks)."}
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": MIN_PAGE_LIMIT, "maximum": MAX_PAGE_LIMIT,
                        "default": operations.DEAD_LETTERS_SHOWN},
             "description": "Entries to show (400 out_of_range otherwise)."}
    return {
        "/v1/queues": {"get": _operation(
            "getQueueOverview", "Queue depths, processing rates and daemons", "queues",
            {200: _json("QueueOverview", "The overview.")}, {503: [redis]})},
        "/v1/dead_letters": {
            "get": _operation(
                "listDeadLetters", "List a queue's dead letters, newest first", "queues",
                {200: _json("DeadLetterList", "The newest entries.")},
                {400: [bad_queue + "; out_of_range (param: limit)."], 503: [redis]},
                query=(queue, limit)),
            "delete": _operation(
                "purgeDeadLetters", "Delete every dead letter of a queue", "queues",
                {200: _json("DeadLetterPurged", "Deleted.")},
                {400: [bad_queue + "."], 503: [redis]}, query=(queue,))},
        "/v1/dead_letters/replay": {"post": _operation(
            "replayDeadLetters", "Put dead jobs back on their queue", "queues",
            {200: _json("DeadLetterReplayed", "Replayed: each entry is removed and its job "
                                              "queued again (a JSON job at attempt 0).")},
            {400: [_INVALID_JSON],
             404: ["dead_letter_not_found: no entry has this id (any more)."],
             422: ["unknown_field, missing, invalid_type, invalid_id, id_and_all (param names "
                   "the field); " + bad_queue + "."],
             503: [redis]},
            body=_body_of("DeadLetterReplay", required=True,
                          description='One entry ("id") or every entry ("all": true).'),
            idempotent_post=True)},
        "/v1/payments/{payment_id}/events": {
            "parameters": [_path_param("payment_id", "The payment's id (pay_...).")],
            "get": _operation(
                "listPaymentEvents", "List the events of a payment and its refunds", "events",
                {200: _json("PaymentEventList", "Its events, oldest first.")},
                {404: ["payment_not_found: no payment has this id."]})},
        "/v1/webhook_endpoints/{id}/health": {
            "parameters": [_path_param("id", "The endpoint's id (ep_...).")],
            "get": _operation(
                "getWebhookEndpointHealth", "How deliveries to an endpoint went lately",
                "webhook_endpoints",
                {200: _json("WebhookEndpointHealth",
                            f"Its last {operations.HEALTH_WINDOW_HOURS} hours.")},
                {404: ["webhook_endpoint_not_found: no endpoint has this id."]})},
    }


def _dashboard_paths() -> Doc:
    def page(media: tuple[str, ...], description: str) -> Doc:
        return {"description": description, "headers": _header_refs(),
                "content": {m: {"schema": {"type": "string"}} for m in media}}

    return {
        "/dashboard": {"get": _operation(
            "dashboard", "The dashboard page", "dashboard",
            {200: page(("text/html",), "The page (it asks for an API key).")}, {},
            security=[])},
        "/dashboard/{file}": {
            "parameters": [_path_param("file", "app.js or style.css.")],
            "get": _operation(
                "dashboardFile", "A file of the dashboard page", "dashboard",
                {200: page(("text/javascript", "text/css"), "The file.")},
                {404: ["not_found: the dashboard has no such file."]}, security=[])},
    }


def _docs_paths() -> Doc:
    def page(media: tuple[str, ...], description: str) -> Doc:
        return {"description": description, "headers": _header_refs(),
                "content": {m: {"schema": {"type": "string"}} for m in media}}

    return {
        "/docs": {"get": _operation(
            "docs", "This document in Swagger UI", "operations",
            {200: page(("text/html",), "The page; it loads /openapi.json.")}, {},
            security=[])},
        "/docs/{file}": {
            "parameters": [_path_param("file", "init.js, swagger-ui-bundle.js or "
                                               "swagger-ui.css.")],
            "get": _operation(
                "docsFile", "A file of the Swagger UI page", "operations",
                {200: page(("text/javascript", "text/css"), "The file.")},
                {404: ["not_found: the page has no such file."]}, security=[])},
    }


def _operation_paths() -> Doc:
    metrics_ok = {"description": f"Prometheus metrics ({metrics.CONTENT_TYPE}).",
                  "headers": _header_refs(),
                  "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": {"get": _operation(
            "healthz", "Liveness: the process answers", "operations",
            {200: _json("Health", "Alive (also while the server stops).")}, {},
            security=[], always_open=True)},
        "/readyz": {"get": _operation(
            "readyz", "Readiness: Redis answers", "operations",
            {200: _json("Ready", "Ready.")},
            {503: ["redis_unavailable: Redis does not answer a ping in time."]},
            security=[])},
        "/metrics": {"get": _operation(
            "metrics", "Prometheus metrics", "operations", {200: metrics_ok},
            {401: ["Only when the server keeps metrics private (metrics_public = false)."]},
            security=[{}, *_BEARER])},
        PATH: {"get": _operation(
            "openapi", "This document", "operations",
            {200: _json({"type": "object"}, "The OpenAPI 3.1 document.")}, {},
            security=[])},
    }
