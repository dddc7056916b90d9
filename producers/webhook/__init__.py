"""The webhook producer: Graph and Business Central notifications in, Kafka messages out."""

from contactsync.producers.webhook.app import create_webhook_app
from contactsync.producers.webhook.registry import (
    CachedRegistry,
    StoreRegistry,
    SubscriptionInfo,
    SubscriptionRegistry,
)

__all__ = [
    "CachedRegistry",
    "StoreRegistry",
    "SubscriptionInfo",
    "SubscriptionRegistry",
    "create_webhook_app",
]
