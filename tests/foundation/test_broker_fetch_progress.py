"""The first `kafka up` fetches the broker with Maven (a minute or more): it says so, and how
the fetch goes, instead of staying silent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contactsync.kafka.local_broker import ensure_jars
from contactsync.settings import Settings

pytestmark = pytest.mark.skipif(shutil.which("mvn") is None or shutil.which("java") is None,
                                reason="needs Maven and Java, as the local broker does")


def test_a_first_fetch_reports_progress_and_the_next_is_silent(tmp_path: Path):
    version = Settings().kafka_version
    heard: list[str] = []
    libs = ensure_jars(version, tmp_path / "cache", progress=heard.append)
    assert any(libs.glob("kafka_2.13-*.jar"))
    assert heard[0].startswith(f"fetching the Kafka {version} broker with Maven")
    assert "first time only" in heard[0]
    assert heard[-1].startswith(f"fetched the Kafka {version} broker: ")
    assert str(libs) in heard[-1]

    again: list[str] = []
    assert ensure_jars(version, tmp_path / "cache", progress=again.append) == libs
    assert again == []  # cached: nothing to say
