"""The broker stops mid-stream and starts again (a test-private broker: the session's is left
alone). The webhook answers 503 meanwhile, the emulators retry, the roles reconnect."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import scenarios

pytestmark = pytest.mark.kafka


def test_a_broker_outage_mid_stream_loses_nothing(tmp_path: Path):
    outcome = scenarios.broker_outage(tmp_path, seed=3, changes=8, outage_s=4.0)
    assert not outcome.problems, "\n".join(outcome.problems + outcome.notes)
    assert (outcome.lost, outcome.duplicated, outcome.deadletters) == (0, 0, 0)
    assert outcome.reconcile_writes == 0, "a Full sync afterwards still found work to do"
