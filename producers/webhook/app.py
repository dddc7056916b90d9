"""The webhook endpoint: Graph and Business Central notifications in, Kafka messages out.

    GET|POST /webhooks/graph?validationToken=...            handshake: 200 text/plain, decoded
    POST     /webhooks/graph                                 changeNotificationCollection
    POST     /webhooks/graph/lifecycle                       lifecycle notifications
    POST     /webhooks/bc                                    BC {"value": [...]}
    GET      /healthz  /readyz  /metrics  /openapi.json

Answers (Graph docs: receive change notifications; BC docs: working with webhooks):
- 202 once every accepted item is acknowledged by the broker (acks=all); the body counts the
  accepted and refused items. A mixed batch publishes the good items and answers 202: the
  refused ones are dropped (and counted), as Graph asks for a clientState mismatch.
- 403 when every item was refused (unknown subscription, wrong service, wrong clientState).
- 503 + Retry-After when Kafka (or the subscription store) cannot take them in time: the sender
  retries, so nothing is lost.
- 400 malformed JSON or schema, 413 too large, 415 not JSON. Never a 500 for bad input.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contactsync import tracing
from contactsync.health import health_routes
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import (
    BC_NOTIFICATIONS,
    GRAPH_LIFECYCLE,
    GRAPH_NOTIFICATIONS,
    topic_name,
)
from contactsync.logs import get_logger
from contactsync.metrics import WebhookMetrics
from contactsync.producers.webhook import parsing
from contactsync.producers.webhook.health import ReadinessProbe
from contactsync.producers.webhook.intake import Intake, bc_intake, graph_intake
from contactsync.producers.webhook.openapi import openapi_document
from contactsync.producers.webhook.publisher import (
    KafkaPublisher,
    ProducerHolder,
    PublishUnavailable,
)
from contactsync.producers.webhook.registry import (
    CachedRegistry,
    RegistryUnavailable,
    SubscriptionRegistry,
)
from contactsync.settings import Settings


def _log() -> Any:
    # Resolved per call: a logger bound at import would miss configure_logging (and redaction).
    return get_logger("contactsync.webhook")

RETRY_AFTER_SECONDS = 5
_NO_SNIFF = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}

Intaker = Callable[[bytes, datetime, str], Awaitable[Intake]]


class _Refusal(Exception):
    def __init__(self, status: int, error: str, detail: str, outcome: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.outcome = outcome


def _error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error, "detail": detail}, status, headers=headers)


def _handshake(request: Request) -> Response | None:
    """The validation handshake, if this is one. Starlette has already URL-decoded the token."""
    if "validationToken" not in request.query_params:
        return None
    token = request.query_params["validationToken"]
    if not token:
        return _error(400, "invalid_handshake", "validationToken is empty")
    return PlainTextResponse(token, 200, headers=_NO_SNIFF)


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json"


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, "too_large", f"the body exceeds {limit} bytes", "too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as they come
            raise _Refusal(413, "too_large", f"the body exceeds {limit} bytes", "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookHandlers:
    """The notification routes; one instance per app."""

    def __init__(
        self,
        settings: Settings,
        registry: CachedRegistry,
        publisher: KafkaPublisher,
        metrics: WebhookMetrics,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.publisher = publisher
        self.metrics = metrics
        self.graph_topic = topic_name(settings, GRAPH_NOTIFICATIONS)
        self.lifecycle_topic = topic_name(settings, GRAPH_LIFECYCLE)
        self.bc_topic = topic_name(settings, BC_NOTIFICATIONS)

    async def _graph(self, body: bytes, now: datetime, trace_id: str) -> Intake:
        items = list(parsing.parse_graph(body).value)
        return await graph_intake(items, self.registry, self.graph_topic, self.lifecycle_topic,
                                  now, trace_id)

    async def _graph_lifecycle(self, body: bytes, now: datetime, trace_id: str) -> Intake:
        items = list(parsing.parse_graph_lifecycle(body).value)
        return await graph_intake(items, self.registry, self.graph_topic, self.lifecycle_topic,
                                  now, trace_id)

    async def _bc(self, body: bytes, now: datetime, trace_id: str) -> Intake:
        items = list(parsing.parse_bc(body).value)
        return await bc_intake(items, self.registry, self.bc_topic, now, trace_id)

    def endpoint(self, route: str) -> Callable[[Request], Awaitable[Response]]:
        intaker: Intaker = {
            "graph": self._graph,
            "graph_lifecycle": self._graph_lifecycle,
            "bc": self._bc,
        }[route]

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            with tracing.span(f"webhook {route}", kind=SpanKind.SERVER,
                              attributes={"http.route": request.url.path}):
                response, outcome = await self._handle(request, route, intaker)
            self.metrics.requests.labels(route, outcome).inc()
            if outcome != "handshake":
                self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)
            return response

        return handle

    async def _handle(
        self, request: Request, route: str, intaker: Intaker
    ) -> tuple[Response, str]:
        handshake = _handshake(request)
        if handshake is not None:
            return handshake, "handshake" if handshake.status_code == 200 else "bad_request"
        if request.method != "POST":
            return _error(400, "invalid_handshake", "validationToken is required"), "bad_request"
        trace_id = tracing.current_trace_id() or uuid.uuid4().hex  # logs match traces
        try:
            if not _is_json(request.headers.get("content-type")):
                raise _Refusal(415, "unsupported_media_type",
                               "the body must be application/json", "unsupported_media_type")
            body = await _read_body(request, self.settings.webhook_max_body_bytes)
            try:
                intake = await intaker(body, datetime.now(UTC), trace_id)
            except parsing.BodyError as exc:
                raise _Refusal(400, exc.kind, exc.detail, "bad_request") from None
            except RegistryUnavailable as exc:
                _log().warning("subscription registry unavailable", route=route, error=str(exc))
                raise _Refusal(503, "unavailable", "the subscription store is unavailable",
                               "unavailable") from None
            self._count_refusals(route, intake)
            if not intake.messages:
                _log().info("notifications refused", route=route, trace_id=trace_id,
                         reasons=dict(intake.refused), subscriptions=sorted(intake.refused_ids))
                raise _Refusal(403, "forbidden", "no item was accepted", "forbidden")
            await self._publish(intake, route, trace_id)
        except _Refusal as refusal:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if refusal.status == 503 else None
            return _error(refusal.status, refusal.error, refusal.detail, headers), refusal.outcome
        accepted = len(intake.messages)
        self.metrics.accepted.labels(route).inc(accepted)
        refused = sum(intake.refused.values())
        if refused:
            _log().info("mixed batch: refused items dropped", route=route, trace_id=trace_id,
                     accepted=accepted, reasons=dict(intake.refused))
        outcome = "accepted" if not refused else "partially_accepted"
        return JSONResponse({"accepted": accepted, "refused": refused}, 202), outcome

    async def _publish(self, intake: Intake, route: str, trace_id: str) -> None:
        started = time.perf_counter()
        try:
            await self.publisher.publish(intake.messages)
        except PublishUnavailable as exc:
            self.metrics.publish_failures.labels(exc.cause).inc()
            _log().warning("kafka did not take the notifications; answering 503", route=route,
                        trace_id=trace_id, count=len(intake.messages), error=str(exc))
            raise _Refusal(503, "unavailable", "the message broker is unavailable; retry",
                           "unavailable") from None
        self.metrics.publish_seconds.observe(time.perf_counter() - started)

    def _count_refusals(self, route: str, intake: Intake) -> None:
        for reason, count in intake.refused.items():
            self.metrics.rejected.labels(route, reason).inc(count)


def create_webhook_app(
    settings: Settings,
    registry: SubscriptionRegistry,
    producer: KafkaProducer | None = None,
    *,
    publish_timeout: float = 2.0,
    registry_ttl: float = 30.0,
) -> Starlette:
    """The ASGI app. Without `producer` it builds one from settings and closes it on shutdown;
    a given producer stays the caller's."""
    metrics = WebhookMetrics()
    warm = [topic_name(settings, base)
            for base in (GRAPH_NOTIFICATIONS, GRAPH_LIFECYCLE, BC_NOTIFICATIONS)]

    def build_producer() -> KafkaProducer:
        return make_producer(
            settings,
            client_id="contactsync-webhook",
            # send() never waits longer than a request may: past that the answer is 503 anyway.
            max_block_ms=max(int(publish_timeout * 1000), 500),
            bootstrap_timeout_ms=5000,
        )

    holder = ProducerHolder(producer, None if producer is not None else build_producer,
                            warm_topics=warm)
    publisher = KafkaPublisher(holder, timeout=publish_timeout)
    cached = CachedRegistry(registry, ttl=registry_ttl)
    handlers = WebhookHandlers(settings, cached, publisher, metrics)
    readiness = ReadinessProbe(holder, publisher)
    document = openapi_document(settings.webhook_max_body_bytes)

    async def openapi(_request: Request) -> Response:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        holder.start()
        try:
            yield
        finally:
            publisher.close()
            holder.close()

    both = ["GET", "POST"]
    routes = [
        Route("/webhooks/graph", handlers.endpoint("graph"), methods=both),
        Route("/webhooks/graph/lifecycle", handlers.endpoint("graph_lifecycle"), methods=both),
        Route("/webhooks/bc", handlers.endpoint("bc"), methods=both),
        *health_routes(readiness.components, metrics.render),
        Route("/openapi.json", openapi),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    app.state.publisher = publisher
    app.state.registry = cached
    return app
