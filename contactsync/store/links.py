"""Links: (user, BC contact id) <-> (user, Graph contact id) with the versions last synced.

Built for volume: a user's links load in one query, and many upserts go in one statement batch
in one transaction (benchmarks sync 100,000 contacts per user): an executemany, or on
PostgreSQL for big batches COPY into a temporary table and one INSERT ... SELECT, twice as fast.

Each row also keeps the pair's content as last synced (`synced_content`, engine/synced.py),
written with every upsert (NULL when the caller does not know it, so it never outlives the
versions it belongs to). Loading links never reads it: a full sync loads 100,000 links and
keeps them small; the near-real-time path asks `synced_contents` for a change's few ids.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, exc, func, or_, select

from contactsync.engine.links import Link, LinkOrigin, canon_bc_id
from contactsync.store.base import Repository, upsert_statement, utcnow
from contactsync.store.records import LinkConflictError, SetupNotFoundError
from contactsync.store.tables import links
from contactsync.store.types import UtcDateTime

_COLUMNS = (
    links.c.user_id,
    links.c.bc_id,
    links.c.graph_id,
    links.c.bc_etag,
    links.c.bc_modified,
    links.c.graph_change_key,
    links.c.synced_hash,
    links.c.origin,
    links.c.updated_at,
)
_WRITTEN = (*_COLUMNS, links.c.synced_content)  # read by `synced_contents` only
_UPDATED_ON_CONFLICT = [c.name for c in _WRITTEN if c.name not in ("user_id", "bc_id")]
_ORIGINS = {origin.value: origin for origin in LinkOrigin}  # faster than LinkOrigin(value)
# Bounded IN lists: SQLite allows 32,766 parameters per statement, PostgreSQL 65,535.
_IN_CHUNK = 1000
_COPY_THRESHOLD = 1000
_LOAD_TABLE = "contactsync_links_load"
_SHARED_TIMES = 20_000  # distinct datetimes kept for sharing while loading a user's links


def _from_row(
    row: Sequence[Any], shared_user_id: str | None = None,
    times: dict[Any, Any] | None = None,
) -> Link:
    """A link from its row; `times` (a user's load) shares equal datetimes between links:
    upserts stamp a whole batch with one `updated_at`, and BC stamps many contacts alike."""
    user_id, bc_id, graph_id, etag, modified, change_key, synced_hash, origin, updated_at = row
    if times is not None:
        if len(times) > _SHARED_TIMES:  # bounded: all-distinct times cannot grow it for ever
            times.clear()
        modified = times.setdefault(modified, modified)
        updated_at = times.setdefault(updated_at, updated_at)
    return Link(
        shared_user_id or user_id, bc_id, graph_id, etag, modified, change_key, synced_hash,
        _ORIGINS[origin], updated_at,
    )  # fmt: skip


def _to_params(link: Link, now: Any, content: str | None = None) -> dict[str, Any]:
    return {
        "user_id": link.user_id,
        "bc_id": canon_bc_id(link.bc_id),  # stored and looked up in one case (GUIDs)
        "graph_id": link.graph_id,
        "bc_etag": link.bc_etag,
        "bc_modified": link.bc_modified,
        "graph_change_key": link.graph_change_key,
        "synced_hash": link.synced_hash,
        "origin": link.origin.value,
        "updated_at": now,
        "synced_content": content,
    }


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LinkRepository(Repository):
    def get(self, user_id: str, bc_id: str) -> Link | None:
        query = select(*_COLUMNS).where(
            links.c.user_id == user_id, links.c.bc_id == canon_bc_id(bc_id)
        )
        with self._reading() as conn:
            row = conn.execute(query).one_or_none()
        return None if row is None else _from_row(row)

    def graph_change_keys(self, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """(user id, Graph id) -> the changeKey its link holds, for a batch (the router's echo
        check: one query per user of a poll, not one per notification). Ids without a link, or
        whose link holds no changeKey, are absent."""
        by_user: dict[str, set[str]] = defaultdict(set)
        for user_id, graph_id in ids:
            by_user[user_id].add(graph_id)
        found: dict[tuple[str, str], str] = {}
        with self._reading() as conn:
            for user_id, graph_ids in by_user.items():
                for chunk in _chunks(sorted(graph_ids)):
                    query = select(links.c.graph_id, links.c.graph_change_key).where(
                        links.c.user_id == user_id, links.c.graph_id.in_(chunk))
                    for graph_id, key in conn.execute(query):
                        if key:
                            found[(user_id, graph_id)] = key
        return found

    def for_user(self, user_id: str) -> list[Link]:
        """All of a user's links, in one query, ordered by BC id (one user id string shared by
        all: a full sync loads 100,000)."""
        query = select(*_COLUMNS).where(links.c.user_id == user_id).order_by(links.c.bc_id)
        with self._reading() as conn:
            times: dict[Any, Any] = {}
            return [_from_row(row, user_id, times) for row in conn.execute(query)]

    def for_ids(self, user_id: str, bc_ids: Iterable[str], graph_ids: Iterable[str]) -> list[Link]:
        """A user's links to any of these BC or Graph ids (the near-real-time path: a change
        needs its own links, not the user's thousands), ordered by BC id."""
        found: dict[str, Link] = {}
        wanted_bc, wanted_graph = sorted(set(map(canon_bc_id, bc_ids))), sorted(set(graph_ids))
        with self._reading() as conn:
            if len(wanted_bc) <= _IN_CHUNK and len(wanted_graph) <= _IN_CHUNK:
                # A change's few ids: one query for both columns (one round trip, one
                # statement, where two were a tenth of the applier's CPU at 10 changes/s).
                queries = [select(*_COLUMNS).where(links.c.user_id == user_id, or_(
                    links.c.bc_id.in_(wanted_bc), links.c.graph_id.in_(wanted_graph)))]
            else:
                queries = [select(*_COLUMNS).where(links.c.user_id == user_id,
                                                   column.in_(chunk))
                           for column, ids in ((links.c.bc_id, wanted_bc),
                                               (links.c.graph_id, wanted_graph))
                           for chunk in _chunks(ids)]
            for query in queries:
                for row in conn.execute(query):
                    link = _from_row(row)
                    found[link.bc_id] = link
        return [found[bc_id] for bc_id in sorted(found)]

    def synced_contents(self, user_id: str, bc_ids: Iterable[str]) -> dict[str, str]:
        """Canonical BC id -> the content its link keeps (engine/synced.py), for a change's
        few ids; links without one are absent."""
        found: dict[str, str] = {}
        with self._reading() as conn:
            for chunk in _chunks(sorted(set(map(canon_bc_id, bc_ids)))):
                query = select(links.c.bc_id, links.c.synced_content).where(
                    links.c.user_id == user_id, links.c.bc_id.in_(chunk),
                    links.c.synced_content.is_not(None))
                found.update((bc_id, content) for bc_id, content in conn.execute(query))
        return found

    def count(self, user_id: str) -> int:
        query = select(func.count()).select_from(links).where(links.c.user_id == user_id)
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def linked_bc_ids(self) -> set[str]:
        """Every BC contact id some user links (the change feed's deletion scan)."""
        with self._reading() as conn:
            return set(conn.execute(select(links.c.bc_id).distinct()).scalars())

    def users_for_bc_id(self, bc_id: str) -> list[str]:
        """Every user who holds a link to this BC contact (the router's question)."""
        query = (select(links.c.user_id).where(links.c.bc_id == canon_bc_id(bc_id))
                 .order_by(links.c.user_id))
        with self._reading() as conn:
            return list(conn.execute(query).scalars())

    def users_for_bc_ids(self, bc_ids: Iterable[str]) -> dict[str, list[str]]:
        """Like users_for_bc_id for a batch: canonical BC id -> user ids (BC ids nobody links
        are absent)."""
        result: dict[str, list[str]] = defaultdict(list)
        with self._reading() as conn:
            for chunk in _chunks(sorted(set(map(canon_bc_id, bc_ids)))):
                query = (
                    select(links.c.bc_id, links.c.user_id)
                    .where(links.c.bc_id.in_(chunk))
                    .order_by(links.c.bc_id, links.c.user_id)
                )
                for bc_id, user_id in conn.execute(query):
                    result[bc_id].append(user_id)
        return dict(result)

    def upsert(self, link: Link, content: str | None = None) -> Link:
        """Insert or replace the link of (user, BC id) and its synced content; the store stamps
        updated_at."""
        now = utcnow()
        with self._writing() as conn:
            self._upsert(conn, [_to_params(link, now, content)])
        return dataclasses.replace(link, bc_id=canon_bc_id(link.bc_id), updated_at=now)

    def upsert_many(self, batch: Iterable[Link],
                    contents: Mapping[tuple[str, str], str] | None = None) -> int:
        """Upsert many links in one batch (one transaction); returns how many distinct links.
        `contents`: (user id, canonical BC id) -> the synced content to keep (else none).

        A (user, BC id) given twice counts once, the last one winning, as one by one would.
        """
        now = utcnow()
        contents = contents or {}
        # PostgreSQL refuses to upsert the same key twice in one statement: keep the last.
        by_key = {(link.user_id, canon_bc_id(link.bc_id)): link for link in batch}
        params = [_to_params(link, now, contents.get(key)) for key, link in by_key.items()]
        if params:
            with self._writing() as conn:
                self._upsert(conn, params)
        return len(params)

    def delete(self, user_id: str, bc_id: str) -> bool:
        with self._writing() as conn:
            result = conn.execute(
                links.delete().where(links.c.user_id == user_id,
                                     links.c.bc_id == canon_bc_id(bc_id))
            )
        return result.rowcount == 1

    def delete_many(self, user_id: str, bc_ids: Iterable[str]) -> int:
        total = 0
        wanted = sorted(set(map(canon_bc_id, bc_ids)))
        if not wanted:
            return 0
        with self._writing() as conn:
            for chunk in _chunks(wanted):
                result = conn.execute(
                    links.delete().where(links.c.user_id == user_id, links.c.bc_id.in_(chunk))
                )
                total += result.rowcount
        return total

    @staticmethod
    def _upsert(conn: Connection, params: list[dict[str, Any]]) -> None:
        stmt = upsert_statement(conn, links, [links.c.user_id, links.c.bc_id], _UPDATED_ON_CONFLICT)
        try:
            if conn.dialect.name == "postgresql" and len(params) >= _COPY_THRESHOLD:
                _copy_upsert(conn, params)
            else:
                conn.execute(stmt, params)
        except exc.IntegrityError as error:
            # Two kinds are possible: the user has no setup (foreign key), or the Graph id is
            # already linked to another BC contact of the user (unique constraint).
            if _is_foreign_key_violation(error):
                users = sorted({str(p["user_id"]) for p in params})
                raise SetupNotFoundError(", ".join(users[:5])) from error
            raise LinkConflictError(
                "an Outlook contact can be linked to only one BC contact per user"
            ) from error


def _copy_upsert(conn: Connection, params: list[dict[str, Any]]) -> None:
    """PostgreSQL: COPY the rows into a temporary table, then upsert them in one statement."""
    names = [column.name for column in _WRITTEN]
    to_db = UtcDateTime().process_bind_param  # the same checks (aware) and UTC as executemany
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{_LOAD_TABLE}")
    conn.exec_driver_sql(f"CREATE TEMP TABLE {_LOAD_TABLE} (LIKE {links.name}) ON COMMIT DROP")
    psycopg_connection: Any = conn.connection.driver_connection
    copy_sql = f"COPY {_LOAD_TABLE} ({', '.join(names)}) FROM STDIN"
    with psycopg_connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
        for row in params:
            row["bc_modified"] = to_db(row["bc_modified"], conn.dialect)
            row["updated_at"] = to_db(row["updated_at"], conn.dialect)
            copy.write_row([row[name] for name in names])
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in _UPDATED_ON_CONFLICT)
    conn.exec_driver_sql(
        f"INSERT INTO {links.name} ({', '.join(names)}) "
        f"SELECT {', '.join(names)} FROM {_LOAD_TABLE} "
        f"ON CONFLICT (user_id, bc_id) DO UPDATE SET {updates}"
    )
    conn.exec_driver_sql(f"DROP TABLE pg_temp.{_LOAD_TABLE}")


def _is_foreign_key_violation(error: exc.IntegrityError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == "23503")
    return "FOREIGN KEY" in str(error.orig)
