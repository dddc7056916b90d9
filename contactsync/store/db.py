"""Engine creation from a URL: SQLite (the embedded default) or PostgreSQL (several workers).

SQLite runs in WAL mode (readers never block the writer), with foreign keys on and a busy
timeout. Python's sqlite3 module would open transactions lazily and upgrade a reader to a writer
mid-transaction, which fails at once with "database is locked" when another process wrote in
between (the busy timeout does not help there). So we take over BEGIN ourselves: transactions
that will write start with BEGIN IMMEDIATE and wait their turn; read-only ones use a plain
BEGIN (see `READ_ONLY`).

PostgreSQL goes through psycopg 3; a bare `postgresql://` URL is rewritten to use it, and every
session runs in UTC so timestamps come back without conversion.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option: `conn.execution_options(**READ_ONLY)` makes SQLite begin a deferred
# (shared) transaction instead of taking the write lock up front. Ignored by PostgreSQL.
BEGIN_MODE_OPTION = "contactsync_sqlite_begin"
READ_ONLY: dict[str, Any] = {BEGIN_MODE_OPTION: "DEFERRED"}


class UnsupportedDatabase(ArgumentError, ValueError):
    """A database URL of a kind the store does not support."""


def masked_url(url: str | URL) -> str:
    """The URL for a message: the password hidden, also when the URL cannot be parsed."""
    try:
        return make_url(str(url) if isinstance(url, str) else url).render_as_string(
            hide_password=True)
    except Exception:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", str(url))


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; `postgresql://` and `postgres://` become `postgresql+psycopg://`."""
    parsed = make_url(str(url)) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UnsupportedDatabase(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
        )
    return parsed


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_db_engine(url: str | URL, **engine_options: Any) -> Engine:
    """Create an Engine for `url`, tuned as described in the module docstring."""
    parsed = normalize_url(url)
    # Keep bound values out of logs and exception texts: they hold secrets (client_state) and
    # personal data (audit details). Callers may still pass hide_parameters=False to debug.
    engine_options.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, engine_options)
    return _postgres_engine(parsed, engine_options)


def _sqlite_engine(url: URL, engine_options: dict[str, Any]) -> Engine:
    memory = is_sqlite_memory(url)
    if memory:
        # One shared connection, or every checkout would see its own empty database.
        engine_options.setdefault("poolclass", StaticPool)
        engine_options.setdefault("connect_args", {"check_same_thread": False})
    else:
        assert url.database is not None
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **engine_options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (module docstring)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            if not memory:
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, faster
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(BEGIN_MODE_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")

    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL mode (once per file: the mode is persistent).

    The switch needs an exclusive lock and SQLite may refuse it at once, without calling the
    busy handler, while another process opens the same new file: retry until the timeout.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _postgres_engine(url: URL, engine_options: dict[str, Any]) -> Engine:
    engine_options.setdefault("pool_pre_ping", True)
    # A database host that does not answer fails in seconds, not after the OS's TCP timeout.
    engine_options.setdefault("connect_args", {"connect_timeout": 10})
    engine = create_engine(url, **engine_options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET TIME ZONE 'UTC'")
        dbapi_connection.commit()

    return engine
