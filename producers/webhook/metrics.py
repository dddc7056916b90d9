"""Prometheus metrics of one webhook app, in a registry of its own (several apps per process in
tests, and no clash with other roles in `contactsync run`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Routes are fixed names, never raw paths: label cardinality stays bounded.
ROUTES = ("graph", "graph_lifecycle", "bc")

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebhookMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "contactsync_webhook_requests",
            "Webhook requests by route and outcome",
            ["route", "outcome"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "contactsync_webhook_notifications_accepted",
            "Notifications published to Kafka, by route",
            ["route"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "contactsync_webhook_notifications_rejected",
            "Notifications refused (not published), by route and reason",
            ["route", "reason"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "contactsync_webhook_publish_seconds",
            "Time from handing a request's messages to the producer to the broker's last ack",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "contactsync_webhook_publish_failures",
            "Requests answered 503 because the broker did not take their messages",
            ["cause"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "contactsync_webhook_request_seconds",
            "Time to answer a notification request, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
