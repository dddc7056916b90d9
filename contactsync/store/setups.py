"""User setups: one row per user, the filter stored as JSON; one setup per Outlook folder."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, exc, func, or_, select

from contactsync.schemas.setup import UserSetup
from contactsync.store.base import Repository, dialect_insert, utcnow
from contactsync.store.records import FolderTakenError, SetupExistsError, SetupNotFoundError
from contactsync.store.tables import user_setups

_FIELDS = list(UserSetup.model_fields)
_SETUP_COLUMNS = [user_setups.c[name] for name in _FIELDS]
_t = user_setups.c


def folder_identity(setup: UserSetup) -> tuple[str, str]:
    """(mailbox key, folder key): Graph's user id (else the mailbox as typed) and the folder
    name, lower-cased, as Graph matches UPNs and Outlook folder names (runner._find_folder)."""
    return (setup.mailbox_id or setup.mailbox).lower(), setup.folder_name.lower()


def _to_row(setup: UserSetup) -> dict[str, Any]:
    row = setup.model_dump(mode="json")
    row["shares_folder_with"] = setup.shares_folder_with or None  # the unique key skips NULLs
    row["mailbox_key"], row["folder_key"] = folder_identity(setup)
    return row


def _from_row(row: Sequence[Any]) -> UserSetup:
    values = dict(zip(_FIELDS, row, strict=True))
    values["shares_folder_with"] = values["shares_folder_with"] or ""
    return UserSetup.model_validate(values)


class SetupRepository(Repository):
    def add(self, setup: UserSetup, *, aliases: Iterable[str] = ()) -> UserSetup:
        """Store a new setup; SetupExistsError if the user already has one, FolderTakenError if
        another setup syncs that folder of that mailbox (known by its Graph user id, or by any
        of its addresses, `aliases`, for setups stored before ids were resolved)."""
        now = utcnow()
        setup = setup.model_copy(update={"shares_folder_with": ""})
        with self._writing() as conn:
            if conn.execute(select(_t.user_id).where(_t.user_id == setup.user_id)).first():
                raise SetupExistsError(setup.user_id)
            self._require_folder_free(conn, setup, aliases)
            insert = dialect_insert(conn, user_setups).values(
                **_to_row(setup), created_at=now, updated_at=now
            ).on_conflict_do_nothing(index_elements=[_t.user_id])
            self._write_or_taken(conn, insert, setup)
        return setup

    def get(self, user_id: str) -> UserSetup | None:
        with self._reading() as conn:
            row = conn.execute(
                select(*_SETUP_COLUMNS).where(_t.user_id == user_id)
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
        query = select(*_SETUP_COLUMNS).order_by(_t.user_id)
        if enabled is not None:
            query = query.where(_t.enabled == enabled)
        with self._reading() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def folder_conflicts(self) -> list[UserSetup]:
        """The setups stopped because they share an earlier setup's folder (stored before one
        folder could belong to one setup only); each names that setup (`shares_folder_with`)."""
        query = (select(*_SETUP_COLUMNS).where(_t.shares_folder_with.is_not(None))
                 .order_by(_t.user_id))
        with self._reading() as conn:
            return [_from_row(row) for row in conn.execute(query)]

    def update(self, user_id: str, /, **changes: Any) -> UserSetup:
        """Change some fields; the result is validated as a whole (pydantic ValidationError).

        SetupNotFoundError if the user has no setup, FolderTakenError if the new folder is
        another setup's. The user id itself cannot change. A stopped setup given a folder of
        its own is stopped no more.
        """
        if "user_id" in changes and changes["user_id"] != user_id:
            raise ValueError("a setup's user_id cannot change: remove it and add a new one")
        with self._writing() as conn:
            current = self._locked(conn, user_id)
            updated = UserSetup.model_validate({**current.model_dump(), **changes})
            if folder_identity(updated) != folder_identity(current):
                updated = updated.model_copy(update={"shares_folder_with": ""})
            if not updated.shares_folder_with:
                self._require_folder_free(conn, updated)
            statement = (user_setups.update().where(_t.user_id == user_id)
                         .values(**_to_row(updated), updated_at=utcnow()))
            self._write_or_taken(conn, statement, updated)
        return updated

    def record_mailbox_id(self, user_id: str, mailbox_id: str) -> UserSetup:
        """Store the Graph user id resolved for a setup's mailbox (`users validate`). If that
        reveals another setup syncing the same folder under another alias, the later of the
        two is stopped (it shares the earlier one's folder)."""
        with self._writing() as conn:
            current = self._locked(conn, user_id)
            updated = current.model_copy(update={"mailbox_id": mailbox_id})
            holder = self._holder(conn, updated)
            if holder is not None and not current.shares_folder_with:
                later, earlier = sorted([user_id, holder], key=lambda u: self._created(conn, u),
                                        reverse=True)
                conn.execute(user_setups.update().where(_t.user_id == later)
                             .values(shares_folder_with=earlier))
                if later == user_id:
                    updated = updated.model_copy(update={"shares_folder_with": earlier})
            conn.execute(user_setups.update().where(_t.user_id == user_id)
                         .values(**_to_row(updated), updated_at=utcnow()))
        return self.require(user_id)

    def set_enabled(self, user_id: str, enabled: bool) -> UserSetup:
        return self.update(user_id, enabled=enabled)

    def enable(self, user_id: str) -> UserSetup:
        return self.set_enabled(user_id, True)

    def disable(self, user_id: str) -> UserSetup:
        return self.set_enabled(user_id, False)

    def remove(self, user_id: str) -> bool:
        """Delete the setup with its links and sync state; False if there was none.

        Setups that shared its folder: the earliest now holds it, the others share its.
        Audit records and subscriptions stay: the subscription service still has to delete
        the user's subscriptions at Graph.
        """
        with self._writing() as conn:
            result = conn.execute(user_setups.delete().where(_t.user_id == user_id))
            sharing = conn.execute(
                select(_t.user_id).where(_t.shares_folder_with == user_id)
                .order_by(_t.created_at, _t.user_id)).scalars().all()
            if sharing:
                heir, *others = sharing
                conn.execute(user_setups.update().where(_t.user_id == heir)
                             .values(shares_folder_with=None))
                conn.execute(user_setups.update().where(_t.user_id.in_(others))
                             .values(shares_folder_with=heir))
        return result.rowcount == 1

    @staticmethod
    def _holder(conn: Connection, setup: UserSetup, aliases: Iterable[str] = ()) -> str | None:
        """The other setup that syncs this setup's folder, if any: the same folder name of a
        mailbox known by the same Graph user id or address (either side's)."""
        mailbox, folder = folder_identity(setup)
        names = {mailbox, setup.mailbox.lower(), *(a.lower() for a in aliases)}
        same_mailbox = or_(_t.mailbox_key.in_(names), func.lower(_t.mailbox).in_(names))
        return conn.execute(
            select(_t.user_id).where(same_mailbox, _t.folder_key == folder,
                                     _t.shares_folder_with.is_(None),
                                     _t.user_id != setup.user_id)
            .order_by(_t.created_at)
        ).scalars().first()

    def require_folder_free(self, setup: UserSetup, aliases: Iterable[str] = ()) -> None:
        """FolderTakenError if another setup syncs this setup's folder (a check before the
        work that leads to `add`, which checks again)."""
        with self._reading() as conn:
            self._require_folder_free(conn, setup, aliases)

    def _require_folder_free(self, conn: Connection, setup: UserSetup,
                             aliases: Iterable[str] = ()) -> None:
        holder = self._holder(conn, setup, aliases)
        if holder is not None:
            raise FolderTakenError(setup.folder_name, setup.mailbox, holder)

    @staticmethod
    def _write_or_taken(conn: Connection, statement: Any, setup: UserSetup) -> None:
        """Run the write; the unique key refusing it (a setup added meanwhile by another
        process) is the same FolderTakenError as the check before."""
        try:
            with conn.begin_nested():
                conn.execute(statement)
        except exc.IntegrityError as error:
            raise FolderTakenError(setup.folder_name, setup.mailbox, "another") from error

    @staticmethod
    def _created(conn: Connection, user_id: str) -> Any:
        return conn.execute(select(_t.created_at).where(_t.user_id == user_id)).scalar_one()

    @staticmethod
    def _locked(conn: Connection, user_id: str) -> UserSetup:
        # FOR UPDATE: two concurrent partial updates must not both start from the same state
        # (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers).
        row = conn.execute(
            select(*_SETUP_COLUMNS).where(_t.user_id == user_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise SetupNotFoundError(user_id)
        return _from_row(row)
