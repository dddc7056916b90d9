"""Settings of the Graph emulator. Defaults are Graph's documented values (Graph docs: throttling,
paging, subscriptions);
tests shrink the delays so a whole suite runs in seconds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class GraphEmulatorConfig(BaseModel):
    tenant_id: str = "9d2f6c1e-4b1a-4c4e-9a53-2c1f0e6b7a10"
    # Paging (reference 1.4 and 2): Outlook's default page is 10; $top up to 1000 (likely);
    # contact delta caps odata.maxpagesize at 200.
    default_page_size: int = 10
    max_top: int = 1000
    delta_default_page_size: int = 100  # UNCONFIRMED: Graph does not document it; loop to deltaLink
    delta_max_page_size: int = 200
    # Throttling per mailbox (reference 4.1).
    mailbox_max_concurrent: int = 4
    mailbox_max_requests: int = 10_000
    mailbox_window_seconds: float = 600.0
    # Graph dispatches up to 4 inner requests of a $batch at once (reference 4.3).
    batch_max_requests: int = 20
    batch_parallelism: int = 4
    # Subscriptions (reference 3.1, 3.2). The live maximum is UNCONFIRMED: 4230 is the documented
    # value, so it is the default; the sandbox can raise it to 10070.
    subscription_max_minutes: int = 4230
    subscription_min_minutes: int = 45
    subscriptions_per_mailbox: int = 1000
    validation_timeout_seconds: float = 10.0
    # Graph refuses an http notificationUrl; local receivers are http: the sandbox, tests and
    # benchmarks allow it (`contactsync emulate --allow-http-notifications`).
    allow_http_notifications: bool = False
    # Notification delivery (reference 3.5): 2xx within 3 s, else retried with backoff (Graph's
    # schedule is unpublished; we use base * 2**attempt) for up to 4 hours, then dropped.
    delivery_timeout_seconds: float = 3.0
    delivery_batch_window_seconds: float = 0.05
    delivery_max_batch: int = 50
    delivery_backoff_base_seconds: float = 10.0
    delivery_max_attempts: int = 10
    # A stale If-Match (a changeKey the contact has moved on from): Graph's error table
    # (learn.microsoft.com/graph/errors, "HTTP status codes") gives 412 Precondition Failed,
    # which Outlook answers with code ErrorIrresolvableConflict; some report that code with 409.
    # Both readings are offered (the product treats either as "re-read and re-plan"), in a
    # single request and in a `$batch` inner request alike.
    stale_change_key_status: Literal[409, 412] = 412
    # Strictness: reject what Graph does not document (unknown $filter forms, unknown properties)
    # with 400, so product code cannot come to depend on it.
    strict: bool = True
    max_email_addresses: int = 3  # Outlook's 3-address limit is UNCONFIRMED; we enforce it

    @classmethod
    def fast(cls, **overrides: object) -> GraphEmulatorConfig:
        """Small delays for tests."""
        values: dict[str, object] = {
            "validation_timeout_seconds": 2.0,
            "delivery_timeout_seconds": 1.0,
            "delivery_batch_window_seconds": 0.02,
            "delivery_backoff_base_seconds": 0.05,
            "delivery_max_attempts": 4,
            "allow_http_notifications": True,
        }
        values.update(overrides)
        return cls.model_validate(values)


class SeedSpec(BaseModel):
    """What `seed()` creates: N mailboxes with M contacts each in one folder."""

    users: int = Field(default=1, ge=0)
    contacts_per_user: int = Field(default=0, ge=0)
    folder: str | None = "Business Central"  # None: the default Contacts folder
    duplicates_by_email: int = Field(
        default=0, ge=0, description="extra contacts re-using an email"
    )
    without_email: int = Field(default=0, ge=0)
    domain: str = "contoso.test"
    user_prefix: str = "user"
