"""kill -9 of role processes while changes flow both ways (real subprocesses, real broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kafka_fixtures import KafkaHandle
from tests.reliability import scenarios

pytestmark = pytest.mark.kafka


def test_killing_any_role_mid_stream_loses_and_duplicates_nothing(kafka: KafkaHandle,
                                                                    tmp_path: Path):
    # Two seeded rounds; each of applier, router, bc-changes and webhook is killed at least
    # once at a random point and restarted after a random pause.
    outcome = scenarios.crash(tmp_path, kafka.bootstrap, seed=7, rounds=2, changes=14, kills=2)
    assert not outcome.problems, "\n".join(outcome.problems)
    assert (outcome.lost, outcome.duplicated, outcome.deadletters) == (0, 0, 0)
    assert outcome.reconcile_writes == 0, "a Full sync afterwards still found work to do"
    assert outcome.converge_s < scenarios.CONVERGE_BOUND_S
