"""README's "Settings" table is the one list of variables an admin sets: every setting has its
row, every row names a setting or a variable the code reads outside `Settings` (the config
file, the state directory, the debug switch, azure-identity's AZURE_* that
contactsync/credentials.py uses, the proxy and CA variables the clients' pool reads), and each
of those has its row too."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

import contactsync.credentials
from contactsync.clients.http_transport import ENVIRONMENT as POOL_VARIABLES
from contactsync.console.signin import SignInSettings
from contactsync.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("contactsync", "producers", "consumers")


def table_variables() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names += re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell)
    return names


def setting_variables() -> dict[str, set[str]]:
    """Each setting's accepted variable names (the console's sign-in settings included)."""
    out = {}
    for model in (Settings, SignInSettings):
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, info in model.model_fields.items():
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                out[f"{model.__name__}.{name}"] = {str(choice) for choice in alias.choices}
            else:
                out[f"{model.__name__}.{name}"] = {f"{prefix}{name.upper()}"}
    return out


def named_in_code() -> set[str]:
    """Every CONTACTSYNC_* name the product's code spells out (read, or named in a message)."""
    names: set[str] = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"\bCONTACTSYNC_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    return names


def azure_variables() -> set[str]:
    source = Path(contactsync.credentials.__file__).read_text()
    return set(re.findall(r"\bAZURE_[A-Z_]+\b", source))


def test_every_setting_has_a_row_and_every_row_a_setting() -> None:
    rows = table_variables()
    assert len(rows) == len(set(rows)), "a variable has two rows"
    settings = setting_variables()
    without_row = sorted(n for n, names in settings.items() if not names & set(rows))
    assert without_row == [], f"settings without a row in README's Settings table: {without_row}"
    known = (set().union(*settings.values()) | named_in_code() | azure_variables()
             | set(POOL_VARIABLES))
    without_setting = sorted(set(rows) - known)
    assert without_setting == [], f"rows naming no setting: {without_setting}"
    unlisted = sorted(set(POOL_VARIABLES) - set(rows))
    assert unlisted == [], f"variables the clients' pool reads without a row: {unlisted}"


def test_every_azure_variable_the_credentials_read_has_a_row() -> None:
    missing = sorted(azure_variables() - set(table_variables()))
    assert missing == [], f"AZURE_* variables without a row: {missing}"


def test_every_variable_the_code_names_has_a_row() -> None:
    """Read outside `Settings` too (the config file, the state directory, the debug switch)."""
    missing = sorted(named_in_code() - set(table_variables()))
    assert missing == [], f"CONTACTSYNC_* variables without a row: {missing}"
