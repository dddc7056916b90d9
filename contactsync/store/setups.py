"""User setups: one row per user, the filter stored as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from contactsync.store.base import Repository, insert_if_absent, utcnow
from contactsync.store.records import SetupExistsError, SetupNotFoundError
from contactsync.store.tables import user_setups
from schemas.setup import UserSetup

_FIELDS = list(UserSetup.model_fields)
_SETUP_COLUMNS = [user_setups.c[name] for name in _FIELDS]


def _to_row(setup: UserSetup) -> dict[str, Any]:
    return setup.model_dump(mode="json")


def _from_row(row: Sequence[Any]) -> UserSetup:
    return UserSetup.model_validate(dict(zip(_FIELDS, row, strict=True)))


class SetupRepository(Repository):
    def add(self, setup: UserSetup) -> UserSetup:
        """Store a new setup; SetupExistsError if the user already has one."""
        now = utcnow()
        with self._writing() as conn:
            row = {**_to_row(setup), "created_at": now, "updated_at": now}
            if not insert_if_absent(conn, user_setups, row):
                raise SetupExistsError(setup.user_id)
        return setup

    def get(self, user_id: str) -> UserSetup | None:
        with self._reading() as conn:
            row = conn.execute(
                select(*_SETUP_COLUMNS).where(user_setups.c.user_id == user_id)
            ).one_or_none()
        return None if row is None else _from_row(row)

    def require(self, user_id: str) -> UserSetup:
        """Like get, but SetupNotFoundError when there is none."""
        setup = self.get(user_id)
        if setup is None:
            raise SetupNotFoundError(user_id)
        return setup

    def list_all(self, *, enabled: bool | None = None) -> list[UserSetup]:
        """Every setup (or only the enabled / disabled ones), ordered by user id."""
        query = select(*_SETUP_COLUMNS).order_by(user_setups.c.user_id)
        if enabled is not None:
            query = query.where(user_setups.c.enabled == enabled)
        with self._reading() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def update(self, user_id: str, /, **changes: Any) -> UserSetup:
        """Change some fields; the result is validated as a whole (pydantic ValidationError).

        SetupNotFoundError if the user has no setup. The user id itself cannot change.
        """
        if "user_id" in changes and changes["user_id"] != user_id:
            raise ValueError("a setup's user_id cannot change: remove it and add a new one")
        with self._writing() as conn:
            current = self._locked(conn, user_id)
            updated = UserSetup.model_validate({**current.model_dump(), **changes})
            conn.execute(
                user_setups.update()
                .where(user_setups.c.user_id == user_id)
                .values(**_to_row(updated), updated_at=utcnow())
            )
        return updated

    def set_enabled(self, user_id: str, enabled: bool) -> UserSetup:
        return self.update(user_id, enabled=enabled)

    def enable(self, user_id: str) -> UserSetup:
        return self.set_enabled(user_id, True)

    def disable(self, user_id: str) -> UserSetup:
        return self.set_enabled(user_id, False)

    def remove(self, user_id: str) -> bool:
        """Delete the setup with its links and sync state; False if there was none.

        Audit records and subscriptions stay: the subscription service still has to delete
        the user's subscriptions at Graph.
        """
        with self._writing() as conn:
            result = conn.execute(user_setups.delete().where(user_setups.c.user_id == user_id))
        return result.rowcount == 1

    @staticmethod
    def _locked(conn: Connection, user_id: str) -> UserSetup:
        # FOR UPDATE: two concurrent partial updates must not both start from the same state
        # (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers).
        row = conn.execute(
            select(*_SETUP_COLUMNS).where(user_setups.c.user_id == user_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise SetupNotFoundError(user_id)
        return _from_row(row)
