"""Knobs of the BC emulator. Defaults are BC online's numbers (BC docs: API limits and webhooks);
tests shrink the delays so a webhook round trip takes milliseconds instead of 30 seconds."""

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

    # Concurrency tokens. A stale If-Match answers 412 here (HTTP's "precondition failed").
    # BC's "Troubleshooting REST API/OData calls" page (dev-itpro/webservices/
    # dynamics-error-codes) names the error `Request_EntityChanged` (ODataConflictException),
    # which BC's runtime sends as 409; set 409 to play that reading. The product treats both
    # as "changed meanwhile: re-read and re-plan".
    stale_etag_status: int = 412

    # Fields by environment: contact `jobTitle` came with BC 2024 (v24). False plays an older
    # environment: the property is absent from `$metadata` and from answers, and a `$select`,
    # `$filter`, `$orderby` or body naming it is refused with 400 BadRequest_NotFound / BadRequest.
    job_title_field: bool = True

    # Renewal body. "Working with webhooks" / "Update subscriptions" (api-reference/v2.0/api/
    # dynamics_subscriptions_update) show the PATCH carrying notificationUrl, resource and
    # clientState; the docs do not say what BC does with an empty body. Strict (default): a
    # renewal without notificationUrl and resource is refused with 400
    # BadRequest_RequiredParamNotProvided. False accepts `{}` (keeps the stored values).
    strict_renewal_body: bool = True

    # Webhooks (§c.4). "Working with webhooks" lists the supported entities, and contacts are
    # not among them, while `webhookSupportedResources` is what a given environment says. True:
    # contacts are listed there and subscribable; False: not listed, and a subscription POST
    # for contacts is refused (400 BadRequest_ResourceNotFound), as for any unsupported entity.
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
