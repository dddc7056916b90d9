"""The one real Kafka broker of a test session.

Order (testcontainers where Docker runs): KAFKA_BOOTSTRAP_SERVERS if set; else testcontainers'
Kafka where a
Docker engine answers (and has the image locally); else the local KRaft broker from the cached
Maven jars. Every test gets its own topic prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from contactsync.kafka.local_broker import BrokerSecurity, LocalBroker
from contactsync.kafka.topics import topic_name
from contactsync.settings import Settings, default_cache_dir
from tests.kafka_tls import make_pki

if TYPE_CHECKING:
    from contactsync.emulators.running import RunningEmulators

KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"


@dataclass
class KafkaHandle:
    bootstrap: str
    kind: str  # "external" | "testcontainers" | "local"
    local: LocalBroker | None = None

    def restart(self) -> None:
        """Stop and start the broker on the same address (local broker only)."""
        if self.local is None:
            pytest.skip(f"cannot restart a {self.kind} broker from the tests")
        self.local.down()
        self.local.up()


def _docker_usable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.images.get(KAFKA_IMAGE)  # offline: the image must already be there
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaHandle]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaHandle(external, "external")
        return
    if _docker_usable():
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            yield KafkaHandle(container.get_bootstrap_server(), "testcontainers")
        return
    data_dir: Path = tmp_path_factory.mktemp("kafka")
    broker = LocalBroker(data_dir, version=Settings().kafka_version, cache_dir=default_cache_dir())
    bootstrap = broker.up()
    try:
        yield KafkaHandle(bootstrap, "local", broker)
    finally:
        broker.down()


@dataclass(frozen=True)
class SecuredKafka:
    """A broker whose only client listener is SASL_SSL with SCRAM-SHA-512 and a certificate
    from a CA made for this session: clients need the CA file, a user and its password. It
    takes OAUTHBEARER too, with Kafka's validator of unsigned tokens."""

    bootstrap: str
    ca_file: Path
    user: str
    password: str

    def env(self, password: str | None = None) -> dict[str, str]:
        """The variables an operator sets to reach it."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONTACTSYNC_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "CONTACTSYNC_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "CONTACTSYNC_KAFKA_SASL_USERNAME": self.user,
            "CONTACTSYNC_KAFKA_SASL_PASSWORD": password or self.password,
            "CONTACTSYNC_KAFKA_SSL_CAFILE": str(self.ca_file),
        }


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """A second local broker, secured as production clusters are (always local: the test
    makes its CA and SCRAM user, which an external broker would not know)."""
    home: Path = tmp_path_factory.mktemp("secured-kafka")
    pki = make_pki(home / "pki")
    password = uuid.uuid4().hex
    broker = LocalBroker(home / "kafka", version=Settings().kafka_version,
                         cache_dir=default_cache_dir(), heap_mb=384,
                         security=BrokerSecurity(pki.keystore, {"contactsync": password},
                                                 unsecured_oauth=True))
    bootstrap = broker.up()
    try:
        yield SecuredKafka(bootstrap, pki.ca_file, "contactsync", password)
    finally:
        broker.down()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def kafka_settings(kafka: KafkaHandle, topic_prefix: str, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, with this test's own topics and state dir."""
    return Settings(
        kafka_bootstrap_servers=kafka.bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=3,
        database_url=f"sqlite:///{tmp_path / 'state.db'}",
        kafka_data_dir=tmp_path / "kafka-unused",
    )


def role_env(settings: Settings) -> dict[str, str]:
    """The variables that point `contactsync` commands and role processes at `settings`: its
    broker, topics, store and services; logs as JSON, warnings and up."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "CONTACTSYNC_TOPIC_PREFIX": settings.topic_prefix,
        "CONTACTSYNC_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "CONTACTSYNC_DATABASE_URL": settings.database_url,
        "CONTACTSYNC_GRAPH_BASE_URL": settings.graph_base_url,
        "CONTACTSYNC_BC_BASE_URL": settings.bc_base_url,
        "CONTACTSYNC_BC_COMPANY": settings.bc_company,
        "CONTACTSYNC_LOG_FORMAT": "json",
        "CONTACTSYNC_LOG_LEVEL": "WARNING",
    }


def read_topic(settings: Settings, base: str, timeout: float = 10.0) -> list[ConsumerRecord]:
    """Every record of a topic so far (up to its end offsets when called), without a group."""
    topic = topic_name(settings, base)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers,
                             enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout} s"
            for records in consumer.poll(timeout_ms=200).values():
                out.extend(records)
        return out
    finally:
        consumer.close(autocommit=False)


def start_tenant(kafka_settings: Settings, mailbox: str,
                 **changes: Any) -> tuple[Settings, RunningEmulators]:
    """This test's topics, the emulators (fast configs) with `mailbox` in Graph, and settings
    pointing at both (plus `changes`). The caller stops the emulators."""
    from contactsync.emulators.bc import BcEmulatorConfig
    from contactsync.emulators.graph import GraphEmulatorConfig
    from contactsync.emulators.running import start_emulators
    from contactsync.kafka.topics import ensure_topics_at

    ensure_topics_at(kafka_settings.kafka_bootstrap_servers, kafka_settings)
    emulators = start_emulators(graph_config=GraphEmulatorConfig.fast(),
                                bc_config=BcEmulatorConfig.for_tests())
    emulators.graph.add_user(mailbox)
    return kafka_settings.model_copy(update={
        "graph_base_url": emulators.graph_base_url, "bc_base_url": emulators.bc_base_url,
        "bc_company": emulators.bc.company_id, **changes}), emulators
