"""The `store` fixture, over SQLite (a temp file) and PostgreSQL (CONTACTSYNC_TEST_POSTGRES_URL).

Start PostgreSQL for these tests with: export CONTACTSYNC_TEST_POSTGRES_URL=$(.ci/postgres.sh)
Every PostgreSQL test gets a schema of its own (dropped afterwards), set as its search_path.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from contactsync.store import Store, create_db_engine, normalize_url

POSTGRES_ENV = "CONTACTSYNC_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a fresh, empty database (not migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'contactsync.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"{POSTGRES_ENV} is not set (start one: export {POSTGRES_ENV}=$(.ci/postgres.sh))"
        )
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_db_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = normalize_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.open(db_url) as opened:
        yield opened
