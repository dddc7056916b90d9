"""OpenTelemetry traces, off by default: one trace from the webhook request through the router
and the applier to the write in Graph or Business Central.

The context travels in each Kafka record's W3C `traceparent` header (the envelope's `trace_id`
is then the trace's id, so logs and traces match). With `CONTACTSYNC_OTEL_TRACES=true` and the
`otel` extra installed (`pip install 'contactsync[otel]'`), spans go to an OTLP endpoint set
by the standard `OTEL_EXPORTER_OTLP_*` variables. Off, every function here costs next to
nothing: the API's default tracer records nothing and injects no header.

The Graph SDK (kiota) makes spans of its own for each request; they join the applier's trace.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

T = TypeVar("T")
Headers = Sequence[tuple[str, bytes]]
Attributes = Mapping[str, str | int]

_TRACER = "contactsync"


class TracingUnavailable(RuntimeError):
    """Traces were asked for, but the SDK or the exporter is not installed."""


def configure(enabled: bool, service_name: str = "contactsync") -> bool:
    """Install a tracer provider exporting over OTLP when `enabled`; False when left off."""
    if not enabled:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise TracingUnavailable(
            "CONTACTSYNC_OTEL_TRACES is on but the OpenTelemetry exporter is not installed: "
            "pip install 'contactsync[otel]', or turn it off") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # the last batch goes out before the process ends
    return True


def _context_of(headers: Headers | None) -> Any:
    if not headers:
        return None
    carrier = {key: value.decode("latin-1") for key, value in headers
               if key in ("traceparent", "tracestate")}
    return propagate.extract(carrier) if carrier else None


@contextlib.contextmanager
def span(name: str, *, parent: Headers | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Attributes | None = None) -> Iterator[None]:
    """A span, current inside the block; its parent the record's context when given, else
    the current span."""
    tracer = trace.get_tracer(_TRACER)
    with tracer.start_as_current_span(name, context=_context_of(parent), kind=kind,
                                      attributes=attributes):
        yield


async def traced(name: str, awaitable: Awaitable[T], *, parent: Headers | None = None,
                 attributes: Attributes | None = None) -> T:
    """`awaitable` awaited inside a span (for work gathered on an event loop)."""
    with span(name, parent=parent, attributes=attributes):
        return await awaitable


def headers() -> list[tuple[str, bytes]]:
    """Kafka headers carrying the current span's context (none while tracing is off)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(key, value.encode("latin-1")) for key, value in carrier.items()]


def current_trace_id() -> str | None:
    """The current trace's id as 32 hex digits (the envelope's format), if one is recorded."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id)
