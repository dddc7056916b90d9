"""The Store: one object that opens the database and hands out the repositories.

Usage (a sketch):
store = Store.open(settings.database_url)      # migrates to the latest schema
store.setups.add(setup)                        # each call is its own transaction
with store.transaction() as tx:                # a unit of work: all or nothing
    tx.links.upsert_many(links)
    tx.audit.append_many(records)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool

from contactsync.store.audit import AuditRepository
from contactsync.store.base import ConnectionSource
from contactsync.store.db import READ_ONLY, create_db_engine
from contactsync.store.links import LinkRepository
from contactsync.store.migrations import migrate
from contactsync.store.setups import SetupRepository
from contactsync.store.subscriptions import SubscriptionRepository
from contactsync.store.sync_state import SyncStateRepository


class Repositories:
    """The repositories, all getting their connections from one source."""

    def __init__(self, source: ConnectionSource) -> None:
        self.setups = SetupRepository(source)
        self.links = LinkRepository(source)
        self.state = SyncStateRepository(source)
        self.subscriptions = SubscriptionRepository(source)
        self.audit = AuditRepository(source)


class Transaction(Repositories):
    """Repositories bound to one open transaction: it commits when the `with` block ends."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        super().__init__(self._same_connection)

    @contextmanager
    def _same_connection(self, _write: bool) -> Iterator[Connection]:
        yield self.connection


class Store(Repositories):
    """Repositories whose every call runs (and commits) in a transaction of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        super().__init__(self._own_transaction)

    @classmethod
    def open(cls, url: str | URL, *, migrate_schema: bool = True, **engine_options: Any) -> Store:
        """Connect to `url` (sqlite:///path or postgresql://...) and bring the schema up to date."""
        store = cls(create_db_engine(url, **engine_options))
        if migrate_schema:
            migrate(store.engine)
        return store

    @property
    def threads_may_share(self) -> bool:
        """Whether a worker thread may read while the event loop's thread uses the store: not
        when every call shares one connection (in-memory SQLite)."""
        return not isinstance(self.engine.pool, StaticPool)

    def transaction(self, *, read_only: bool = False) -> AbstractContextManager[Transaction]:
        """A unit of work: commits at the end of the `with` block, rolls back on an exception.

        On SQLite a writing transaction holds the database's single write lock throughout:
        keep it short (no network calls inside). `read_only=True` only tells SQLite not to take
        that lock (writes inside may then fail with "database is locked").
        """
        return self._transaction(read_only)

    @contextmanager
    def _transaction(self, read_only: bool) -> Iterator[Transaction]:
        with self._own_transaction(not read_only) as conn:
            yield Transaction(conn)

    @contextmanager
    def _own_transaction(self, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if not write:
                conn.execution_options(**READ_ONLY)
            with conn.begin():
                yield conn

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the password: render_as_string hides it by default.
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"
