"""JSON Schema files for every message and contract, written into `schemas/json/`.

`contactsync schemas export` regenerates them; a test fails when the files are stale, so the
published contracts always match the code. Other teams' consumers can validate against them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contactsync.schemas.contacts import BcContact, CanonicalContact, GraphContact
from contactsync.schemas.envelope import Envelope
from contactsync.schemas.messages import MESSAGE_TYPES
from contactsync.schemas.report import RunReport
from contactsync.schemas.setup import UserSetup

SCHEMA_DIR = Path(__file__).parent / "json"

CONTRACTS: dict[str, type[BaseModel]] = {
    "canonical-contact": CanonicalContact,
    "bc-contact": BcContact,
    "graph-contact": GraphContact,
    "user-setup": UserSetup,
    "run-report": RunReport,
}


def _render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content, for every message (in its envelope) and every contract."""
    files: dict[str, str] = {}
    for name, (model, version) in MESSAGE_TYPES.items():
        schema = Envelope[model].model_json_schema(by_alias=True)  # type: ignore[valid-type]
        schema["title"] = f"{name} v{version}"
        schema["properties"]["type"]["const"] = name
        schema["properties"]["schema_version"]["const"] = version
        files[f"{name}.v{version}.schema.json"] = _render(schema)
    for name, contract in CONTRACTS.items():
        files[f"{name}.schema.json"] = _render(contract.model_json_schema(by_alias=True))
    return files


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files missing, different or extra compared with the code."""
    expected = expected_files()
    present = {p.name for p in directory.glob("*.schema.json")}
    stale = [n for n, text in expected.items() if not (directory / n).exists()
             or (directory / n).read_text() != text]
    return sorted(stale + sorted(present - expected.keys()))


def write_all(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = expected_files()
    for old in directory.glob("*.schema.json"):
        if old.name not in expected:
            old.unlink()
    for name, text in expected.items():
        (directory / name).write_text(text)
    return sorted(expected)
