"""Optional OpenTelemetry tracing (``pip install 'payflow[otel]'``): one trace per payment.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the OpenTelemetry packages are installed;
then :func:`setup` (called once by ``payflow serve``) sends spans in batches to that OTLP/HTTP
collector. A trace follows a payment::

    POST /v1/payments             (server span; continues an incoming ``traceparent``)
    └─ payment.process            (the payment consumer, per job; again per retry)
       └─ webhook.deliver         (per attempt, per endpoint or the log sink)

The context crosses the queues in the job envelope (``"tp"``: a W3C ``traceparent`` string, see
:mod:`payflow.jobs`) and reaches a receiver in the webhook POST's ``traceparent`` header.

Off costs nothing: call sites check :data:`ON` (one attribute load) and call nothing else, a
job without a context encodes byte for byte as before, and opentelemetry is imported only by
:func:`setup`, and only when tracing is turned on. :func:`setup` decides once, at start: the
HTTP app built afterwards has its traced route or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as Span  # re-exported for call sites' annotations
    from opentelemetry.trace import Tracer

log = structlog.get_logger("payflow.tracing")

ENDPOINT_VAR: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME: Final = "payflow"

ON: bool = False  # checked at every call site: ``if tracing.ON:``
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def setup(*, exporter: SpanExporter | None = None) -> None:
    """Turn tracing on when ``$OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and not
    ``OTEL_SDK_DISABLED=true``) and OpenTelemetry is installed; otherwise leave it off (one
    warning when the variable is set but the packages are missing). ``exporter`` (tests):
    export every span at once to it, whatever the environment says; :func:`shutdown` turns
    tracing off again."""
    global ON, _tracer, _provider
    if exporter is None and (not os.environ.get(ENDPOINT_VAR)
                             or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"):
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        processor: SpanProcessor
        if exporter is not None:
            processor = SimpleSpanProcessor(exporter)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            processor = BatchSpanProcessor(OTLPSpanExporter())
    except ImportError as exc:
        log.warning("tracing.unavailable", reason=str(exc),
                    detail=f"{ENDPOINT_VAR} is set but OpenTelemetry is not installed: "
                           "pip install 'payflow[otel]'; tracing is off")
        return
    from payflow import __version__

    service = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(
        {"service.name": service, "service.version": __version__}))
    provider.add_span_processor(processor)
    _provider, _tracer, ON = provider, provider.get_tracer("payflow", __version__), True
    if exporter is None:
        log.info("tracing.enabled", endpoint=os.environ[ENDPOINT_VAR], service=service)


def shutdown() -> None:
    """Flush and stop the exporter; tracing is off afterwards (tests; the SDK also flushes at
    exit)."""
    global ON, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    ON, _tracer, _provider = False, None, None


def _on() -> Tracer:
    assert _tracer is not None, "tracing is off: check tracing.ON first"
    return _tracer


def _context(traceparent: str | None) -> Any:
    """The OpenTelemetry context of a ``traceparent`` (an empty one without)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {"traceparent": traceparent} if traceparent else {}
    return TraceContextTextMapPropagator().extract(carrier)


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` naming ``span`` (what a job or a webhook POST carries)."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span (that of the request being served), if any."""
    from opentelemetry.trace import get_current_span

    span = get_current_span()
    return traceparent(span) if span.get_span_context().is_valid else None


@contextmanager
def server_span(name: str, headers: Mapping[str, str],
                attributes: Mapping[str, str | int]) -> Iterator[Span]:
    """A SERVER span for an HTTP request, the child of its ``traceparent`` header if any; the
    current span meanwhile. An exception is recorded on it and re-raised."""
    from opentelemetry.trace import SpanKind

    parent = _context(headers.get("traceparent"))
    with _on().start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                     attributes=dict(attributes)) as span:
        yield span


def start(name: str, parent: str | None, attributes: Mapping[str, str | int], *,
          kind: Literal["consumer", "client"] = "consumer") -> Span:
    """A span (CONSUMER: a job's processing; CLIENT: a request sent), the child of the job's
    ``parent`` traceparent (a root without); the caller ends it with :func:`end`."""
    from opentelemetry.trace import SpanKind

    return _on().start_span(name, context=_context(parent), kind=SpanKind[kind.upper()],
                            attributes=dict(attributes))


def end(span: Span, *, error: str | None = None, **attributes: str | int | None) -> None:
    """Set ``attributes`` (None ones are left out), mark the span failed with ``error``, end
    it."""
    from opentelemetry.trace import Status, StatusCode

    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(_ATTRIBUTE_NAMES.get(key, key), value)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def fail(spans: Iterable[Span | None], exc: BaseException) -> None:
    """End those of ``spans`` still open: their work raised ``exc``."""
    for span in spans:
        if span is not None and span.is_recording():
            span.record_exception(exc)
            end(span, error=f"{type(exc).__name__}: {exc}")


# Keyword names of :func:`end` -> attribute names.
_ATTRIBUTE_NAMES: Final = {
    "outcome": "payflow.outcome",
    "event_id": "payflow.event.id",
    "event_type": "payflow.event.type",
    "http_status": "http.response.status_code",
}
