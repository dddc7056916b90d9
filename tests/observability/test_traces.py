"""With traces on, one Outlook edit is one trace: the webhook request, the router's command,
the applier's run and its write to Business Central, linked through the Kafka headers; the
envelope's trace id is the trace's id. Off (the default), nothing is recorded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contactsync import tracing
from contactsync.kafka.topics import SYNC_COMMANDS
from contactsync.schemas.envelope import decode
from tests.kafka_fixtures import read_topic
from tests.pipeline.test_end_to_end import ANNA, System, bc_webhooks, eventually, system

pytestmark = pytest.mark.kafka
__all__ = ["bc_webhooks", "system"]

_EXPORTER = InMemorySpanExporter()


class _WhileRecording(SimpleSpanProcessor):
    """Records only during the test that asked for it: the provider stays for the session."""

    active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            super().on_end(span)


_PROCESSOR = _WhileRecording(_EXPORTER)


def test_without_a_provider_nothing_is_recorded_or_carried():
    # The API's default (what runs unless CONTACTSYNC_OTEL_TRACES is on): no context, no header.
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("a recording provider is installed in this process")
    with tracing.span("anything"):
        assert tracing.headers() == []
        assert tracing.current_trace_id() is None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider records into memory (set once: OpenTelemetry allows one
    global provider per process)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.active = True
    try:
        yield _EXPORTER
    finally:
        _PROCESSOR.active = False
        _EXPORTER.clear()


def _chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def test_an_outlook_edit_is_one_trace_from_the_webhook_to_the_bc_write(
        spans: InMemorySpanExporter, system: System):
    contact = system.folder(ANNA)["lon1@example.com"]
    spans.clear()
    system.emulators.graph.person_update_contact(ANNA, contact["id"], {"jobTitle": "Poet"})

    def the_write() -> ReadableSpan | None:
        return next((s for s in spans.get_finished_spans() if s.name == "bc PATCH"), None)

    write = eventually(the_write, what="a traced write to BC")
    by_id = {s.context.span_id: s for s in spans.get_finished_spans()
             if s.context.trace_id == write.context.trace_id}
    chain = _chain(write, by_id)
    assert chain[0] == "bc PATCH"
    assert "applier apply" in chain and "router route" in chain
    assert chain[-1] == "webhook graph", chain  # the root: the notification's request
    assert chain.index("applier apply") < chain.index("router route")
    trace_id = trace.format_trace_id(write.context.trace_id)
    commands = [decode(r.value) for r in read_topic(system.settings, SYNC_COMMANDS)]
    assert trace_id in {str(c.trace_id) for c in commands}, "the envelope carries the trace id"
