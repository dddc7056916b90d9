"""Roles start on topics whose partitions are led: no kafka-python warning on a normal start."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from contactsync.kafka.errors import BrokerError
from contactsync.kafka.io import make_producer
from contactsync.kafka.topics import ALL_TOPICS, await_topics, ensure_topics_at, topic_name
from contactsync.settings import Settings
from tests.kafka_fixtures import KafkaHandle

pytestmark = pytest.mark.kafka


def _settings(kafka: KafkaHandle, tmp_path: Path) -> Settings:
    return Settings(kafka_bootstrap_servers=kafka.bootstrap,
                    topic_prefix=f"s{uuid.uuid4().hex[:8]}.", topic_partitions=12,
                    database_url=f"sqlite:///{tmp_path / 'state.db'}",
                    kafka_data_dir=tmp_path / "kafka-unused")


def test_once_started_every_partition_takes_writes_without_a_library_warning(
        kafka: KafkaHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    settings = _settings(kafka, tmp_path)
    caplog.set_level(logging.WARNING, logger="kafka")
    ensure_topics_at(settings, settings)  # what `topics ensure` or the sandbox just did
    await_topics(settings, ALL_TOPICS)  # what every role does before it starts
    producer = make_producer(settings)
    try:
        for base in ALL_TOPICS:
            for partition in range(settings.topic_partitions):
                producer.send(topic_name(settings, base), b"{}", partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close()
    noise = [r.getMessage()[:200] for r in caplog.records if r.name.startswith("kafka")]
    assert noise == []


def test_a_role_started_before_its_topics_exist_says_which_command_makes_them(
        kafka: KafkaHandle, tmp_path: Path):
    settings = _settings(kafka, tmp_path)
    with pytest.raises(BrokerError, match=r"missing .* run `contactsync topics ensure`"):
        await_topics(settings, ALL_TOPICS, timeout=1.0)
