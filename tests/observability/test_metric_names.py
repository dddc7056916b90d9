"""`exported_metric_names()` is what dashboards and alerts are checked against: it must name
exactly the series a /metrics page carries."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from contactsync.metrics import WebhookMetrics, exported_metric_names

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created")}


def test_the_names_are_those_of_the_exposition():
    page = WebhookMetrics().render().decode()  # the webhook's page: its series + the process's
    exposed = {family.name + suffix
               for family in text_string_to_metric_families(page)
               if family.name.startswith("contactsync_")
               for suffix in _SUFFIXES[family.type]}
    assert exposed == exported_metric_names()
    for required in ("contactsync_consumer_lag", "contactsync_deadletter_messages_total",
                     "contactsync_user_last_success_timestamp_seconds",
                     "contactsync_api_requests_total", "contactsync_api_throttled_total",
                     "contactsync_oldest_unapplied_change_age_seconds",
                     "contactsync_subscription_expiry_timestamp_seconds",
                     "contactsync_credential_failures_total"):
        assert required in exposed
