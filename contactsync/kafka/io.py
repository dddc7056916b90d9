"""Producers and consumers with the pipeline's delivery settings, and bootstrap resolution.

Producers: idempotent, acks=all, so a send that returned is on the broker, once, even across
retries and a broker restart. Consumers: no auto-commit; the caller commits past finished work
(at-least-once, DESIGN.md 9).
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from contactsync.kafka.local_broker import BrokerError, LocalBroker
from contactsync.settings import Settings


def local_broker(settings: Settings) -> LocalBroker:
    return LocalBroker(
        settings.kafka_data_dir, version=settings.kafka_version, cache_dir=settings.cache_dir
    )


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS if set, else the running local broker; else a clear error."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    status = local_broker(settings).status()
    if status.running and status.bootstrap:
        return status.bootstrap
    raise BrokerError(
        "no Kafka broker: start the local one with `contactsync kafka up` "
        "or set KAFKA_BOOTSTRAP_SERVERS."
    )


def make_producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
        "client_id": "contactsync",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(bootstrap: str, group_id: str, *topics: str, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 200,
        "client_id": f"contactsync-{group_id}",
    }
    config.update(overrides)
    return KafkaConsumer(*topics, **config)
