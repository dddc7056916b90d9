"""What every HTTP exchange with Graph or Business Central reports, in one place: httpx event
hooks on each client's connection pool (`response_hooks(service)`), so every request counts
whichever path sent it (paging, batches, retries, subscriptions).

- `contactsync_api_requests_total{service,method,status}` and, for a 429 or a 503 with
  Retry-After, `contactsync_api_throttled_total{service}`;
- the readiness component `<service>_credentials`: a 401 marks it failing, any answer that is
  not a 401 or 403 marks it working again;
- with tracing on (contactsync.tracing), a client span per exchange, child of the current span
  (the applier's), so a trace ends at the write itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from contactsync import metrics
from contactsync.health import READINESS

Hook = Callable[[Any], Awaitable[None]]
_SPAN = "contactsync.span"


def is_throttle(status: int, headers: httpx.Headers) -> bool:
    return status == 429 or (status == 503 and "retry-after" in headers)


def response_hooks(service: str) -> dict[str, list[Hook]]:
    """`event_hooks` for an `httpx.AsyncClient` talking to `service` ("graph" or "bc")."""
    component = f"{service}_credentials"
    tracer = trace.get_tracer("contactsync")

    async def on_request(request: httpx.Request) -> None:
        span = tracer.start_span(f"{service} {request.method}", kind=SpanKind.CLIENT,
                                 attributes={"http.request.method": request.method,
                                             "server.address": request.url.host})
        if span.is_recording():
            request.extensions[_SPAN] = span

    async def on_response(response: httpx.Response) -> None:
        status = response.status_code
        span = response.request.extensions.pop(_SPAN, None)
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            span.end()
        metrics.API_REQUESTS.labels(service, response.request.method, str(status)).inc()
        if is_throttle(status, response.headers):
            metrics.API_THROTTLED.labels(service).inc()
        if status == 401:
            READINESS.report(component, False, f"not accepted: {service} refused our token (401)")
        elif status != 403:
            READINESS.report(component, True, f"{service} accepts our token")

    return {"request": [on_request], "response": [on_response]}
