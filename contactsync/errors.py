"""The project's one error root (httpx-style): every failure we raise on purpose is a
`ContactsyncError`, and says itself whether trying again later can help.

    ContactsyncError                  .retryable, .credential, .retry_after, .service
    ├── BrokerError                   Kafka cannot be used as configured (kafka.errors)
    ├── StoreError                    a refused store operation: setup exists, ... (store.records)
    └── ServiceError                  talking to another system failed: Graph, BC, Kafka, store
        └── RetryableError            worth trying again later (retried, then dead-lettered)
            └── ServiceUnavailable    away, slow or 5xx; .retry_after if the service sent one
                ├── KafkaUnavailable  the broker did not take (or ack) a message
                └── StoreUnavailable  the database is away or locked

The HTTP clients add their own kinds beneath `ServiceError` (`contactsync.clients.errors`:
Throttled, NotFound, Conflict, the credential failures, ...). The Kafka runtime reads only the
attributes declared here, so it never imports a client for its retry signal:

- `retryable`: may succeed later without any change on our side;
- `credential`: our Azure credential failed, not the record at hand: the worker pauses and
  leaves the records on the topic instead of failing them;
- `retry_after`: the wait the other side asked for (a 429's or a 503's Retry-After), or None.
"""

from __future__ import annotations


class ContactsyncError(Exception):
    retryable: bool = False
    credential: bool = False
    retry_after: float | None = None
    service: str = ""


class ServiceError(ContactsyncError):
    """Every failure talking to another system; the message names the service, the HTTP
    status and the service's error code where there is one (never a token or a body)."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        code: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code
        self.url = url  # the request's URL without its query: a retry line names it

    def __str__(self) -> str:
        where = f"{self.service} " if self.service else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        code = f"{self.code}: " if self.code else ""
        return f"{where}{status}{code}{self.args[0] if self.args else ''}".strip()


class RetryableError(ServiceError):
    """A failure that may succeed later without any change on our side."""

    retryable = True


class ServiceUnavailable(RetryableError):
    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        service: str = "",
        status: int | None = None,
        code: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message, service=service, status=status, code=code, url=url)
        self.retry_after = retry_after  # a 503's Retry-After is honoured like a 429's


class KafkaUnavailable(ServiceUnavailable):
    """The broker did not take or acknowledge a message (or a group request) in time."""

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs.setdefault("service", "kafka")
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class StoreUnavailable(ServiceUnavailable):
    """The state store (SQLite / PostgreSQL) is away or locked."""

    def __init__(self, message: str, **kwargs: object) -> None:
        kwargs.setdefault("service", "store")
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, ContactsyncError) and error.retryable


def is_credential_failure(error: BaseException) -> bool:
    return isinstance(error, ContactsyncError) and error.credential


def server_retry_after(error: BaseException) -> float | None:
    """The wait the service asked for (a 429's or a 503's Retry-After), or None."""
    return error.retry_after if isinstance(error, ContactsyncError) else None
