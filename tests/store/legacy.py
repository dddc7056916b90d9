"""A store as an older contactsync left it: setups written at schema version 2, before one
Outlook folder could belong to one setup only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from contactsync.store import Store, create_db_engine, migrate
from contactsync.store.tables import user_setups


def write_v2_setups(db_url: str, setups: Sequence[tuple[str, str]],
                    folder_name: str = "Business Central") -> None:
    """(user id, mailbox) setups, enabled, each a day after the one before, at version 2."""
    engine = create_db_engine(db_url)
    migrate(engine, target=2)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        for day, (user_id, mailbox) in enumerate(setups):
            conn.execute(user_setups.insert().values(
                user_id=user_id, mailbox=mailbox, folder_name=folder_name, contact_filter={},
                enabled=True, create_in_bc=True, outlook_delete_policy="recreate",
                max_delete_share=0.1, max_delete_floor=20,
                created_at=first + timedelta(days=day), updated_at=first))
    engine.dispose()


def mark_sharing(store: Store, user_id: str, holder: str) -> None:
    """Make `user_id` share `holder`'s folder, as migration 3 leaves a pair `users add` stored
    before it (the repository itself never lets two setups take one folder)."""
    holder_setup = store.setups.require(holder)
    with store.engine.begin() as conn:
        conn.execute(user_setups.update().where(user_setups.c.user_id == user_id).values(
            mailbox=holder_setup.mailbox.upper(), folder_name=holder_setup.folder_name,
            mailbox_key=holder_setup.mailbox.lower(),
            folder_key=holder_setup.folder_name.lower(), shares_folder_with=holder))
