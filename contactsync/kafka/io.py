"""Producers and consumers with the pipeline's delivery settings; the client configuration
(bootstrap and security) every kafka-python client of ours is built with.

Producers: idempotent, acks=all, so a send that returned is on the broker, once, even across
retries and a broker restart. Consumers: no auto-commit; the caller commits past finished work
(at-least-once, docs/architecture.md 9).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from contactsync.kafka.errors import BrokerError
from contactsync.kafka.topics import group_name
from contactsync.settings import Settings

# Where a client connects: the settings (bootstrap and security), or a bare bootstrap address
# of a PLAINTEXT broker (the local broker's own checks, tests).
KafkaTarget = Settings | str
Client = TypeVar("Client")
NO_BROKER = ("no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS (on this machine, "
             "`contactsync kafka up` starts a local one and prints its address)")
BOOTSTRAP_TIMEOUT_MS = 8000  # a broker that is away or refuses us: told in seconds, not 30


class KafkaConnectError(BrokerError, KafkaError):  # type: ignore[misc]
    """No client could connect; the message says what to fix. Still a KafkaError, so a role
    that builds a client mid-run retries it like any other broker trouble."""

    def __str__(self) -> str:
        return str(self.args[0])  # the sentence alone, without KafkaError's class-name prefix


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else a clear error. The Maven-jar local broker is development
    tooling (the sandbox, `contactsync kafka up`, the tests): no role falls back to it."""
    if settings.kafka_bootstrap_servers:
        return settings.kafka_bootstrap_servers
    raise BrokerError(NO_BROKER)


def client_config(target: KafkaTarget) -> dict[str, Any]:
    """What every producer, consumer and admin client is built with: the bootstrap servers and
    the configured security (protocol, SASL mechanism and credentials, TLS files)."""
    if isinstance(target, str):
        return {"bootstrap_servers": target}
    from contactsync.kafka.security import security_config

    return {"bootstrap_servers": resolve_bootstrap(target),
            "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS, **security_config(target)}


def connect(client: Callable[..., Client], target: KafkaTarget, *args: Any,
            **config: Any) -> Client:
    """Build a kafka-python client (which bootstraps at once). With settings, a failed bootstrap
    is one sentence naming the fix: no broker, an untrusted certificate, a refused login."""
    try:
        return client(*args, **config)
    except KafkaError as exc:
        if isinstance(target, str):
            raise
        from contactsync.kafka.security import connect_failure

        raise KafkaConnectError(connect_failure(target, config["bootstrap_servers"])) from exc


def role_consumer(
    settings: Settings, role_group: str, *topics: str, **overrides: Any
) -> KafkaConsumer:
    """A role's consumer: its group carries the topic prefix (deployments sharing a cluster
    never share a group), and it is a static member (`group.instance.id`): the replica
    restarted under the same name takes its partitions back at once, without waiting for the
    session timeout and a rebalance of the whole group."""
    base = settings.kafka_instance_base()
    if base is not None:
        overrides.setdefault("group_instance_id", f"{base}-{role_group}")
    return make_consumer(settings, group_name(settings, role_group), *topics, **overrides)


def make_producer(target: KafkaTarget, **overrides: Any) -> KafkaProducer:
    config: dict[str, Any] = {
        **client_config(target),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "delivery_timeout_ms": 120_000,
        "request_timeout_ms": 30_000,
        "client_id": "contactsync",
        "metrics_enabled": False,
    }
    config.update(overrides)
    return connect(KafkaProducer, target, **config)


def make_consumer(
    target: KafkaTarget, group_id: str | None, *topics: str, **overrides: Any
) -> KafkaConsumer:
    config: dict[str, Any] = {
        **client_config(target),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 200,
        "client_id": f"contactsync-{group_id or 'reader'}",
        "metrics_enabled": False,
    }
    config.update(overrides)
    return connect(KafkaConsumer, target, *topics, **config)
