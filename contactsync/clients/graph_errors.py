"""Graph failures -> the client error tree, in one function (`graph_failure`).

Used for whole responses, for the inner responses of a `$batch`, and for transport exceptions,
so the engine and executor never see HTTP, httpx or kiota types.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    SyncStateExpired,
    Throttled,
    Unauthorized,
)

SERVICE = "graph"
DEFAULT_RETRY_AFTER = 1.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: integer, decimal (Graph's docs show `2.128`) or an
    HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            return str(err.get("code") or ""), str(err.get("message") or "")
    return "", ""


def graph_failure(
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    exc: BaseException | None = None,
    delta: bool = False,
) -> ServiceError:
    """Map a failed response (status, headers, parsed JSON body) or a transport exception."""
    if exc is not None:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            # The request never reached Graph: safe to repeat even a create.
            return ServiceUnavailable(f"{type(exc).__name__}", service=SERVICE, code="NotSent")
        if isinstance(exc, httpx.TimeoutException):
            return ServiceUnavailable("timeout", service=SERVICE, code="Timeout")
        return ServiceUnavailable(f"{type(exc).__name__}", service=SERVICE, code="TransportError")
    assert status is not None
    code, message = _error_fields(body)
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    kw: dict[str, Any] = {"service": SERVICE, "status": status, "code": code}
    if status == 429:
        retry_after = parse_retry_after(lower.get("retry-after"))
        return Throttled(
            message or "throttled",
            retry_after=max(retry_after or 0.0, 0.0) or DEFAULT_RETRY_AFTER,
            **kw,
        )
    if status == 410 and (delta or code in ("syncStateNotFound", "resyncRequired")):
        return SyncStateExpired(message or "delta token expired", **kw)
    if status in (404, 410):
        return NotFound(message or "not found", **kw)
    if status in (409, 412):
        return Conflict(message or "version conflict", **kw)
    if status in (401, 403):
        return Unauthorized(message or "not authorized", **kw)
    if status == 408 or status >= 500:
        return ServiceUnavailable(message or "service unavailable", **kw)
    return Invalid(message or f"request refused ({status})", **kw)
