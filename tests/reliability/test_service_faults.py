"""Faults of the services, from the emulators' admin APIs, while changes flow: each phase ends
converged within scenarios.FAULT_BOUND_S of its last change (through retries, the change
feed's polling, lifecycle handling or the subscription keeper), with nothing lost or
duplicated, no dead letter, and nothing left for a Full sync to do."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka_fixtures import KafkaHandle
from tests.reliability import scenarios
from tests.reliability.harness import Deployment

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def deployment(kafka: KafkaHandle, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    dep = scenarios.fault_deployment(tmp_path_factory.mktemp("faults"), kafka.bootstrap)
    try:
        yield dep
    finally:
        dep.close()


@pytest.mark.parametrize("phase", scenarios.FAULT_PHASES)
def test_each_service_fault_ends_converged(deployment: Deployment, phase: str):
    outcome = scenarios.fault_phase(deployment, phase, seed=5, changes=3)
    assert not outcome.problems, "\n".join(outcome.problems + outcome.notes)
    assert (outcome.lost, outcome.duplicated, outcome.deadletters) == (0, 0, 0)
    assert outcome.reconcile_writes == 0, "a Full sync afterwards still found work to do"
    assert outcome.converge_s <= scenarios.FAULT_BOUND_S
