"""A store as an older contactsync left it: setups written at schema version 2, before one
Outlook folder could belong to one setup only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from contactsync.store import create_db_engine, migrate
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
