"""Knobs of the BC emulator. Defaults are BC online's numbers (reference/bc.md §c); tests shrink
the delays so a webhook round trip takes milliseconds instead of 30 seconds."""

from __future__ import annotations

from pydantic import BaseModel, Field


class BcEmulatorConfig(BaseModel):
    environment: str = "production"
    companies: list[str] = Field(default_factory=lambda: ["CRONUS USA, Inc."])

    # Paging (§c.3): server-driven, 20,000 per page at most.
    max_page_size: int = 20_000

    # Rate limits per principal (§c.5).
    max_concurrent: int = 5
    max_requests: int = 6_000
    window_seconds: float = 300.0

    # Concurrency tokens. A stale If-Match answers 412 here, as the API docs and our brief
    # say. Decompiled BC28 (third-party reading, not a primary source) maps the same
    # NavODataConflictException to 409 Request_EntityChanged; set 409 to test a client
    # against that behaviour. The client treats both as Conflict.
    stale_etag_status: int = 412

    # Webhooks (§c.4).
    webhooks_supported: bool = True
    notification_delay_seconds: float = 30.0
    max_notifications: int = 1_000  # more changes than this in one window -> "collection"
    subscription_lifetime_seconds: float = 3 * 24 * 3600
    max_subscriptions: int = 200
    handshake_timeout_seconds: float = 5.0
    notification_timeout_seconds: float = 10.0
    # BC codeunit 6154: 5 attempts, gaps 60 s (attempts 0-2), 600 s, 6,000 s. Scaled for tests.
    retry_delays_seconds: list[float] = Field(
        default_factory=lambda: [60.0, 60.0, 60.0, 600.0, 6_000.0]
    )
    retry_delay_scale: float = 1.0
    # How often the delivery task wakes up to look for due work.
    delivery_poll_seconds: float = 0.5

    @classmethod
    def for_tests(cls, **overrides: object) -> BcEmulatorConfig:
        """Tiny delays: notifications after 50 ms, retries after a few ms."""
        values: dict[str, object] = {
            "notification_delay_seconds": 0.05,
            "retry_delay_scale": 0.001,
            "delivery_poll_seconds": 0.01,
            "handshake_timeout_seconds": 2.0,
            "notification_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return cls.model_validate(values)
