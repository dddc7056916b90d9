"""Where each sync stands: per user (Graph delta link, last sync marks), per BC company
(the lastModifiedDateTime watermark of the change feed). Every write is one atomic statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import case, exc, select

from contactsync.store.base import Repository, dialect_insert, upsert_statement, utcnow
from contactsync.store.records import SetupNotFoundError, UserSyncState
from contactsync.store.tables import company_watermarks, user_sync_state


class Unset(Enum):
    """Marks an argument that was not given (None is a value: it clears the field)."""

    UNSET = "unset"


UNSET = Unset.UNSET
_STATE_COLUMNS = (
    user_sync_state.c.user_id,
    user_sync_state.c.delta_link,
    user_sync_state.c.last_sync_at,
    user_sync_state.c.last_full_sync_at,
    user_sync_state.c.updated_at,
)


def _state(row: Sequence[Any]) -> UserSyncState:
    return UserSyncState(*row)


class SyncStateRepository(Repository):
    def get(self, user_id: str) -> UserSyncState:
        """The user's state; an empty one (all None) before the first sync."""
        query = select(*_STATE_COLUMNS).where(user_sync_state.c.user_id == user_id)
        with self._reading() as conn:
            row = conn.execute(query).one_or_none()
        return UserSyncState(user_id) if row is None else _state(row)

    def update(
        self,
        user_id: str,
        *,
        delta_link: str | Unset | None = UNSET,
        last_sync_at: datetime | Unset | None = UNSET,
        last_full_sync_at: datetime | Unset | None = UNSET,
    ) -> UserSyncState:
        """Set the given fields (None clears one) in one statement; returns the new state.

        SetupNotFoundError if the user has no setup.
        """
        values: dict[str, Any] = {"user_id": user_id, "updated_at": utcnow()}
        if delta_link is not UNSET:
            values["delta_link"] = delta_link
        if last_sync_at is not UNSET:
            values["last_sync_at"] = last_sync_at
        if last_full_sync_at is not UNSET:
            values["last_full_sync_at"] = last_full_sync_at
        with self._writing() as conn:
            changed = [name for name in values if name != "user_id"]
            stmt = upsert_statement(conn, user_sync_state, [user_sync_state.c.user_id], changed)
            try:
                row = conn.execute(stmt.values(values).returning(*_STATE_COLUMNS)).one()
            except exc.IntegrityError as error:  # the only constraint that can fail: the FK
                raise SetupNotFoundError(user_id) from error
        return _state(row)

    def set_delta_link(self, user_id: str, delta_link: str | None) -> UserSyncState:
        return self.update(user_id, delta_link=delta_link)

    def mark_synced(self, user_id: str, at: datetime, *, full: bool = False) -> UserSyncState:
        """Record a finished sync run; a full one moves both marks."""
        if full:
            return self.update(user_id, last_sync_at=at, last_full_sync_at=at)
        return self.update(user_id, last_sync_at=at)

    def get_watermark(self, company: str) -> datetime | None:
        query = select(company_watermarks.c.watermark).where(
            company_watermarks.c.company == company
        )
        with self._reading() as conn:
            value: datetime | None = conn.execute(query).scalar_one_or_none()
        return value

    def set_watermark(self, company: str, watermark: datetime) -> None:
        """Set the company's watermark, also backwards (a reset); see advance_watermark."""
        values = {"company": company, "watermark": watermark, "updated_at": utcnow()}
        with self._writing() as conn:
            stmt = upsert_statement(
                conn,
                company_watermarks,
                [company_watermarks.c.company],
                ["watermark", "updated_at"],
            )
            conn.execute(stmt.values(values))

    def advance_watermark(self, company: str, watermark: datetime) -> datetime:
        """Move the watermark forward only, atomically; returns the value now stored.

        Two change-feed workers finishing out of order can then never move it backwards.
        """
        values = {"company": company, "watermark": watermark, "updated_at": utcnow()}
        with self._writing() as conn:
            base = dialect_insert(conn, company_watermarks)
            excluded = base.excluded
            # SQLite compares our fixed-width UTC text, PostgreSQL timestamptz: both in order.
            stmt = base.on_conflict_do_update(
                index_elements=[company_watermarks.c.company],
                set_={
                    "watermark": case(
                        (
                            excluded.watermark > company_watermarks.c.watermark,
                            excluded.watermark,
                        ),
                        else_=company_watermarks.c.watermark,
                    ),
                    "updated_at": excluded.updated_at,
                },
            )
            stored: datetime = conn.execute(
                stmt.values(values).returning(company_watermarks.c.watermark)
            ).scalar_one()
        return stored
