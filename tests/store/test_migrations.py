"""Engine set-up and the schema-migration runner, against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, UniqueConstraint, inspect, select, text

from contactsync.store import (
    LATEST_VERSION,
    SchemaTooNewError,
    Store,
    create_db_engine,
    current_version,
    migrate,
    normalize_url,
)
from contactsync.store.tables import metadata, schema_version
from tests.store.legacy import write_v2_setups

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def schema_of(engine: Engine) -> dict[str, tuple[set[str], set[str]]]:
    """Table -> (column names, index and unique constraint names), as the database has them."""
    inspector = inspect(engine)
    result = {}
    for table in inspector.get_table_names():
        columns = {c["name"] for c in inspector.get_columns(table)}
        named = {i["name"] for i in inspector.get_indexes(table)}
        named |= {u["name"] for u in inspector.get_unique_constraints(table)}
        result[table] = (columns, {n for n in named if n and not n.startswith("sqlite_")})
    return result


def expected_schema() -> dict[str, tuple[set[str], set[str]]]:
    result = {}
    for table in metadata.sorted_tables:
        named = {str(i.name) for i in table.indexes}
        named |= {str(c.name) for c in table.constraints if isinstance(c, UniqueConstraint)}
        result[table.name] = ({c.name for c in table.columns}, named)
    return result


def versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(schema_version.c.version).order_by("version")).scalars())


def test_fresh_database_reaches_the_latest_version_matching_tables_py(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert current_version(conn) == 0
    assert migrate(engine) == list(range(1, LATEST_VERSION + 1))
    with engine.connect() as conn:
        assert current_version(conn) == LATEST_VERSION
    assert schema_of(engine) == expected_schema()
    engine.dispose()


def test_migrating_twice_is_a_no_op(db_url: str) -> None:
    Store.open(db_url).close()
    engine = create_db_engine(db_url)
    assert migrate(engine) == []
    assert versions(engine) == list(range(1, LATEST_VERSION + 1))
    engine.dispose()


def test_an_older_database_is_upgraded(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert migrate(engine, target=1) == [1]
    assert "subscriptions" not in inspect(engine).get_table_names()
    assert "links" in inspect(engine).get_table_names()

    with Store.open(db_url) as store:  # opening runs the missing steps
        assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))
        assert store.subscriptions.list_all() == []
    engine.dispose()


def test_a_store_with_the_processed_events_table_upgrades_without_it(db_url: str) -> None:
    """Version 3 still had the never-read dedupe table; the upgrade drops it, keeps the rest."""
    write_v2_setups(db_url, [("anna", "anna@contoso.test")])
    engine = create_db_engine(db_url)
    assert migrate(engine, target=3) == [3]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO processed_events (consumer_group, event_id, processed_at)"
                          " VALUES ('router', 'evt-1', :at)"), {"at": T0})
    with Store.open(db_url) as store:
        assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))
        assert "processed_events" not in inspect(store.engine).get_table_names()
        assert store.setups.require("anna").mailbox == "anna@contoso.test"
        assert schema_of(store.engine) == expected_schema()
    engine.dispose()


def test_links_saved_before_synced_content_upgrade_with_none(db_url: str) -> None:
    """Version 4's links have no synced content: the upgrade keeps them as they were, with
    none (their next change is read by GET), and a link saved after it keeps its content."""
    write_v2_setups(db_url, [("anna", "anna@contoso.test")])
    engine = create_db_engine(db_url)
    assert migrate(engine, target=4) == [3, 4]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO links (user_id, bc_id, graph_id, bc_etag, bc_modified, graph_change_key,"
            " synced_hash, origin, updated_at) VALUES ('anna', 'b1', 'g1', 'W/\"e1\"', NULL,"
            " 'k1', 'h1', 'bc', :at)"), {"at": T0})
    with Store.open(db_url) as store:
        assert versions(store.engine) == list(range(1, LATEST_VERSION + 1))
        assert schema_of(store.engine) == expected_schema()
        link = store.links.get("anna", "b1")
        assert link is not None
        assert (link.graph_id, link.bc_etag, link.graph_change_key, link.synced_hash) == (
            "g1", 'W/"e1"', "k1", "h1")
        assert store.links.synced_contents("anna", ["b1"]) == {}
        store.links.upsert(link, '{"bc": {}}')
        assert store.links.synced_contents("anna", ["B1"]) == {"b1": '{"bc": {}}'}
        store.links.upsert(link)  # saved again without content: none, never a stale one
        assert store.links.synced_contents("anna", ["b1"]) == {}
    engine.dispose()


def test_a_newer_database_is_refused(db_url: str) -> None:
    engine = create_db_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            schema_version.insert().values(
                version=LATEST_VERSION + 1, description="future", applied_at=datetime.now(UTC)
            )
        )
    with pytest.raises(SchemaTooNewError):
        migrate(engine)
    engine.dispose()


def test_concurrent_openers_do_not_fail(db_url: str) -> None:
    openers = 6
    barrier = threading.Barrier(openers)
    errors: list[BaseException] = []
    applied: list[list[int]] = []

    def open_store() -> None:
        engine = create_db_engine(db_url)
        try:
            barrier.wait()
            applied.append(migrate(engine))
        except BaseException as error:  # collected and asserted on below
            errors.append(error)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    # Exactly one opener did the work; the others found the schema current.
    assert sorted(applied, key=len) == [[]] * (openers - 1) + [list(range(1, LATEST_VERSION + 1))]
    engine = create_db_engine(db_url)
    assert versions(engine) == list(range(1, LATEST_VERSION + 1))
    engine.dispose()


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "state.db"  # parent directories are created
    engine = create_db_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) > 0
    assert path.exists()
    engine.dispose()


def test_in_memory_sqlite_is_one_database() -> None:
    with Store.open("sqlite://") as store:
        store.state.set_watermark("c", T0)
        assert store.state.get_watermark("c") == T0  # same database across checkouts


def test_url_normalisation() -> None:
    assert normalize_url("postgresql://u@h:5/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@h/db")


def test_store_repr_hides_the_password() -> None:
    store = Store(create_db_engine("postgresql://user:hunter2@localhost/db"))
    assert "hunter2" not in repr(store)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgres_sessions_run_in_utc(db_url: str) -> None:
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TIME ZONE")).scalar() == "UTC"
    engine.dispose()


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        store.state.set_watermark("committed", T0)
        with store.transaction() as tx:  # holds SQLite's write lock until the block ends
            tx.state.set_watermark("pending", T0)
            started = time.monotonic()
            assert store.state.get_watermark("committed") == T0  # another connection, deferred
            assert store.state.get_watermark("pending") is None
            assert time.monotonic() - started < 5
        assert store.state.get_watermark("pending") == T0


def test_errors_do_not_carry_bound_values(store: Store) -> None:
    from contactsync.store import Subscription, SubscriptionService
    from contactsync.store.tables import subscriptions

    sub = Subscription(
        "s-1", SubscriptionService.GRAPH, "r", "s3cr3t", datetime.now(UTC), "https://h", "bob"
    )
    store.subscriptions.upsert(sub)
    with pytest.raises(Exception) as raised, store.transaction() as tx:
        tx.connection.execute(
            subscriptions.insert().values(
                subscription_id="s-1", service="graph", resource="r", client_state="s3cr3t",
                expiration=datetime.now(UTC), notification_url="u", updated_at=datetime.now(UTC),
            )
        )  # fmt: skip
    assert "s3cr3t" not in str(raised.value)
