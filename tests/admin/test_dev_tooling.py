"""The emulators and the Maven-jar local broker are development tooling: a plain install
(without the `sandbox` extra) says how to get them, and `contactsync run` never falls back to
the local broker (Kafka is the one KAFKA_BOOTSTRAP_SERVERS names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The CLI as a plain install runs it: `cryptography` (the sandbox extra) cannot be imported.
WITHOUT_SANDBOX_EXTRA = ("import sys; sys.modules['cryptography'] = None; "
                         "from contactsync.cli.main import app; "
                         "app(sys.argv[1:], prog_name='contactsync')")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, CONTACTSYNC_STATE_DIR=str(tmp_path / "state"), **extra)
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "CONTACTSYNC_KAFKA_BOOTSTRAP_SERVERS",
                "CONTACTSYNC_GRAPH_BASE_URL", "CONTACTSYNC_BC_BASE_URL"):
        env.pop(var, None)
    env.update(extra)
    return env


@pytest.mark.parametrize("command", ["emulate", "sandbox"])
def test_without_the_sandbox_extra_the_dev_commands_name_it_in_one_sentence(
        tmp_path: Path, command: str):
    proc = subprocess.run([sys.executable, "-c", WITHOUT_SANDBOX_EXTRA, command],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: `contactsync {command}` needs the development tooling (cryptography is not "
        "installed): pip install 'contactsync[sandbox]'"]
    assert not (tmp_path / "state" / "kafka").exists(), "no broker was started"


def test_run_without_a_configured_broker_says_so_and_starts_no_local_broker(tmp_path: Path):
    env = _env(tmp_path, CONTACTSYNC_GRAPH_BASE_URL="https://graph.example/v1.0",
               CONTACTSYNC_BC_BASE_URL="https://bc.example/v2.0/t/production/api/v2.0")
    exe = str(Path(sys.executable).parent / "contactsync")
    proc = subprocess.run([exe, "run"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS (on this machine, "
        "`contactsync kafka up` starts a local one and prints its address)"]
    assert not (tmp_path / "state" / "kafka").exists(), "no local broker was started"
