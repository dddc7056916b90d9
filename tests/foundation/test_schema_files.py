"""The JSON Schema files in schemas/json match the models.

Regenerate them with `contactsync schemas export`.
"""

from __future__ import annotations

import json
from pathlib import Path

from contactsync.schemas.export import expected_files, stale_files, write_all
from contactsync.schemas.messages import MESSAGE_TYPES


def test_published_schema_files_are_up_to_date():
    assert stale_files() == [], "run `contactsync schemas export` and commit schemas/json"


def test_every_message_type_has_a_versioned_schema_with_the_envelope(tmp_path: Path):
    write_all(tmp_path)
    for name, (_, version) in MESSAGE_TYPES.items():
        schema = json.loads((tmp_path / f"{name}.v{version}.schema.json").read_text())
        assert set(schema["required"]) >= {"type", "schema_version", "payload"}
        assert schema["properties"]["type"]["const"] == name


def test_a_changed_or_extra_file_is_reported_stale(tmp_path: Path):
    write_all(tmp_path)
    name = next(iter(expected_files()))
    (tmp_path / name).write_text("{}")
    (tmp_path / "old.v1.schema.json").write_text("{}")
    assert stale_files(tmp_path) == sorted([name, "old.v1.schema.json"])
