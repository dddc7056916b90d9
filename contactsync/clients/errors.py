"""One exception tree for both services (Graph and Business Central).

    ServiceError                      every failure talking to Graph or BC
    ├── RetryableError                worth trying again later (the executor retries, then DLQ)
    │   ├── Throttled                 429; .retry_after seconds
    │   ├── ServiceUnavailable        5xx, timeouts, connection errors
    ├── NotFound                      404 (and Graph 410 on a single item)
    ├── Conflict                      412 precondition failed / 409: the version moved on
    ├── Unauthorized                  401/403: credentials refused or missing
    ├── Invalid                       400/413/422: our request is wrong; never retried
    └── SyncStateExpired              Graph delta 410 syncStateNotFound: start the delta over

Clients map status codes to these in one place each, so the engine and the executor never look
at HTTP. Every error carries the service, the HTTP status and the service's error code and
message (never a token or a request body).
"""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        code: str = "",
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code

    def __str__(self) -> str:
        where = f"{self.service} " if self.service else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        code = f"{self.code}: " if self.code else ""
        return f"{where}{status}{code}{self.args[0] if self.args else ''}".strip()


class RetryableError(ServiceError):
    """A failure that may succeed later without any change on our side."""


class Throttled(RetryableError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float = 1.0,
        service: str = "",
        status: int | None = 429,
        code: str = "",
    ) -> None:
        super().__init__(message, service=service, status=status, code=code)
        self.retry_after = retry_after


class ServiceUnavailable(RetryableError):
    pass


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    pass


class Unauthorized(ServiceError):
    pass


class Invalid(ServiceError):
    pass


class SyncStateExpired(ServiceError):
    pass
