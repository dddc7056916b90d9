"""Every Prometheus series the product exports, in one place (dashboards and alerts in deploy/
are checked against `exported_metric_names()`).

Two kinds of registry:
- `REGISTRY`, one per process: the pipeline's series (consumer lag, last success per user, dead
  letters, API calls, ...). Every role of the process reports into it and every /metrics
  endpoint of the process (a role's --metrics-port, the webhook's own) renders it.
- `WebhookMetrics`, one per webhook app: tests run several apps in one process, and their
  request counters must not add up.

Cardinality: labels take bounded values only. `user` is a user id (the setup's id), never an
email; `reason` of a dead letter is the error's type, not its free-text message; routes,
services, methods and statuses are fixed names.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes...
PlatformCollector(registry=REGISTRY)

# --- Kafka consumers (router, applier) ---

CONSUMER_LAG = Gauge(
    "contactsync_consumer_lag",
    "Records not yet consumed: the partition's end offset minus the consumer's position",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)


class _OldestUnapplied(Collector):
    """Age of the oldest change a consumer group holds or has yet to read, computed at scrape
    time so a stuck worker's gauge keeps growing between polls."""

    name = "contactsync_oldest_unapplied_change_age_seconds"

    def __init__(self) -> None:
        self._since: dict[str, float | None] = {}

    def set_oldest(self, group: str, occurred_at: float | None) -> None:
        """`occurred_at` (epoch seconds) of the oldest change not finished; None when caught up."""
        self._since[group] = occurred_at

    def clear(self) -> None:
        """Forget every group (a test starting over in the same process)."""
        self._since.clear()

    def age(self, group: str) -> float:
        since = self._since.get(group)
        return 0.0 if since is None else max(0.0, time.time() - since)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            self.name,
            "Seconds since the oldest change a consumer group has not finished was observed "
            "(0 when caught up)",
            labels=["group"],
        )
        for group in sorted(self._since):
            family.add_metric([group], self.age(group))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self.collect()


OLDEST_UNAPPLIED = _OldestUnapplied()
REGISTRY.register(OLDEST_UNAPPLIED)

DEADLETTERS = Counter(
    "contactsync_deadletter_messages",
    "Records written to the dead-letter topic, by the error's type",
    ["reason"],
    registry=REGISTRY,
)

# --- Sync outcomes (applier, reconcile) ---

USER_LAST_SUCCESS = Gauge(
    "contactsync_user_last_success_timestamp_seconds",
    "When a sync for the user last finished without a failed contact (Unix time)",
    ["user"],
    registry=REGISTRY,
)

# --- Microsoft APIs (the clients' shared send path) ---

API_REQUESTS = Counter(
    "contactsync_api_requests",
    "HTTP requests to Graph and Business Central, by service, method and status code",
    ["service", "method", "status"],
    registry=REGISTRY,
)
API_THROTTLED = Counter(
    "contactsync_api_throttled",
    "Requests the service throttled (429, or 503 with Retry-After), by service",
    ["service"],
    registry=REGISTRY,
)
CREDENTIAL_FAILURES = Counter(
    "contactsync_credential_failures",
    "Failed attempts to get or use a credential (token refused, secret expired), by service",
    ["service"],
    registry=REGISTRY,
)

# --- Subscriptions ---

SUBSCRIPTION_EXPIRY = Gauge(
    "contactsync_subscription_expiry_timestamp_seconds",
    "When the user's webhook subscription on the service expires unless renewed (Unix time)",
    ["service", "user"],
    registry=REGISTRY,
)

# --- Readiness, as a series too (alerts on a component down for long) ---

COMPONENT_READY = Gauge(
    "contactsync_component_ready",
    "1 when the component (kafka, store, credentials of a service) was usable at the last check",
    ["component"],
    registry=REGISTRY,
)


# --- The webhook's own series, per app ---


# Routes are fixed names (graph, graph_lifecycle, bc), never raw paths: bounded labels.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebhookMetrics:
    """One webhook app's series, in a registry of its own; `render` adds the process's."""

    content_type = CONTENT_TYPE

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
        return render(self.registry, REGISTRY)


def render(*registries: CollectorRegistry) -> bytes:
    """The exposition text of the registries, one after the other (their names never clash)."""
    return b"".join(generate_latest(r) for r in registries)


# Exposition names per metric type (prometheus-client's text format, created series included).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}


def _names_of(metrics: Iterable[MetricWrapperBase]) -> set[str]:
    out: set[str] = set()
    for metric in metrics:
        for family in metric.describe():
            out.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return out


def exported_metric_names() -> set[str]:
    """Every `contactsync_*` series name as it appears on /metrics (counters with `_total`,
    histograms with `_bucket`/`_sum`/`_count`), whether or not it has a sample yet."""
    product = [CONSUMER_LAG, DEADLETTERS, USER_LAST_SUCCESS, API_REQUESTS, API_THROTTLED,
               CREDENTIAL_FAILURES, SUBSCRIPTION_EXPIRY, COMPONENT_READY]
    webhook = WebhookMetrics()
    per_app = [webhook.requests, webhook.accepted, webhook.rejected, webhook.publish_seconds,
               webhook.publish_failures, webhook.request_seconds]
    return _names_of(product + per_app) | {OLDEST_UNAPPLIED.name}


def user_label(user_id: str) -> str:
    """The `user` label of a user id. An id that is an e-mail address (the default id is the
    mailbox) becomes `u-` and 12 hex digits of its SHA-256: series never carry an address."""
    if "@" not in user_id:
        return user_id
    return "u-" + hashlib.sha256(user_id.encode()).hexdigest()[:12]
