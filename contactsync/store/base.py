"""What every repository shares: how it gets a connection, the clock, dialect-specific inserts.

A repository does not know whether it runs in its own transaction (a `Store` attribute: each
call commits) or inside a caller's (a `Transaction` attribute: all calls commit together). It
asks its `ConnectionSource` for a connection, saying whether it will write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Table, exc
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

# write: True when the work will write (SQLite then takes the write lock up front).
ConnectionSource = Callable[[bool], AbstractContextManager[Connection]]
DialectInsert = PgInsert | SqliteInsert


def utcnow() -> datetime:
    return datetime.now(UTC)


class Repository:
    def __init__(self, connection_source: ConnectionSource) -> None:
        self._connection_source = connection_source

    def _reading(self) -> AbstractContextManager[Connection]:
        return self._connection(False)

    def _writing(self) -> AbstractContextManager[Connection]:
        return self._connection(True)

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Connection]:
        with self._connection_source(write) as conn:
            try:
                yield conn
            except exc.StatementError as error:
                # A value our column types refuse (a naive datetime) surfaces as the ValueError
                # it is, not wrapped in SQLAlchemy's StatementError; database errors stay as is.
                if not isinstance(error, exc.DBAPIError) and isinstance(error.orig, ValueError):
                    raise error.orig from error
                raise


def dialect_insert(conn: Connection, table: Table) -> DialectInsert:
    """INSERT with the dialect's ON CONFLICT support (SQLite and PostgreSQL share the syntax)."""
    if conn.dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def upsert_statement(
    conn: Connection, table: Table, keys: Sequence[Column[Any]], update: Sequence[str]
) -> DialectInsert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET each column in `update` to the new value."""
    stmt = dialect_insert(conn, table)
    return stmt.on_conflict_do_update(
        index_elements=list(keys), set_={name: stmt.excluded[name] for name in update}
    )


def insert_if_absent(conn: Connection, table: Table, values: Mapping[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING in one statement; True if the row was new.

    Unlike catching IntegrityError, this leaves a PostgreSQL transaction usable afterwards.
    RETURNING tells whether a row went in (an INSERT's rowcount is not reliable on psycopg).
    """
    key = next(iter(table.primary_key.columns))
    stmt = dialect_insert(conn, table).values(values).on_conflict_do_nothing().returning(key)
    return conn.execute(stmt).first() is not None
