"""Consumer groups as operators share a cluster: each deployment's groups carry its topic prefix,
and each role's consumer is a static member named after its host and role, so a restarted
replica takes its partitions back at once (figures: tests/reliability, crash scenarios)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition

from contactsync.kafka.topics import SYNC_COMMANDS, ensure_topics_at, group_name, make_admin
from contactsync.kafka.topics import topic_name as topic
from contactsync.kafka.worker import Worker, WorkRecord, build_worker
from contactsync.settings import Settings
from tests.kafka_fixtures import KafkaHandle

pytestmark = pytest.mark.kafka

ROLE_GROUP = "contactsync-router"


def _deployment(kafka: KafkaHandle, tmp_path: Path, name: str) -> Settings:
    settings = Settings(kafka_bootstrap_servers=kafka.bootstrap,
                        topic_prefix=f"{name}{uuid.uuid4().hex[:8]}.", topic_partitions=2,
                        database_url=f"sqlite:///{tmp_path / f'{name}.db'}",
                        kafka_data_dir=tmp_path / "kafka-unused")
    ensure_topics_at(settings, settings)
    return settings


def _ignore(records: Sequence[WorkRecord]) -> None:
    pass


def _poll_until_assigned(worker: Worker) -> set[TopicPartition]:
    for _ in range(200):  # each poll waits up to 0.5 s for the group to settle
        worker.run_once()
        if worker.consumer.assignment():
            return set(worker.consumer.assignment())
    raise AssertionError("the worker never got partitions")


def test_two_deployments_on_one_broker_never_share_a_consumer_group(kafka: KafkaHandle,
                                                                    tmp_path: Path):
    deployments = [_deployment(kafka, tmp_path, name) for name in ("blue", "green")]
    workers = [build_worker(s, ROLE_GROUP, [SYNC_COMMANDS], _ignore) for s in deployments]
    try:
        own = [{TopicPartition(topic(s, SYNC_COMMANDS), p) for p in (0, 1)}
               for s in deployments]
        for worker in workers:
            _poll_until_assigned(worker)
        for _ in range(3):  # both keep going: neither fenced nor rebalanced by the other
            for worker in workers:
                worker.run_once()
        # Each holds every partition of its own deployment's topic, and only those.
        assert [set(w.consumer.assignment()) for w in workers] == own
        admin = make_admin(deployments[0])
        try:
            names = [group_name(s, ROLE_GROUP) for s in deployments]
            groups: Any = admin.describe_groups(names)
        finally:
            admin.close()
        assert len(set(names)) == 2
        for name in names:
            [member] = groups[name]["members"]
            assert member["group_instance_id"] == f"{socket.gethostname()}-{ROLE_GROUP}"
    finally:
        for worker in workers:
            worker.close()


def test_dynamic_membership_when_the_instance_id_is_off(kafka: KafkaHandle, tmp_path: Path):
    settings = _deployment(kafka, tmp_path, "dyn").model_copy(
        update={"kafka_instance_id": "off"})
    worker = build_worker(settings, ROLE_GROUP, [SYNC_COMMANDS], _ignore)
    try:
        _poll_until_assigned(worker)
        admin = make_admin(settings)
        try:
            name = group_name(settings, ROLE_GROUP)
            groups: Any = admin.describe_groups([name])
        finally:
            admin.close()
        [member] = groups[name]["members"]
        assert not member.get("group_instance_id")
    finally:
        worker.close()
