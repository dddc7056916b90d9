"""One user's sync in this process: the setup, the services, and what is worth keeping between
the user's runs in a long-lived process (the applier), held where it can be seen instead of in
module-global caches keyed by client.

- The folder id, so the near-real-time path does not list a mailbox's folders for every
  change. Kept for a few minutes: a folder a user deleted is created again after that (writes
  into it fail until then, are reported, and are retried by the next run).
- The contacts as last read or written (near_real_time.Known), shared by every user of one
  `Sessions` (BC contacts are the company's, not a user's).

A caller that runs one user many times keeps a `Sessions` and passes it; a one-shot run (CLI,
a reconcile) gets a fresh session that keeps nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.store.records import SetupStoppedError
from contactsync.sync.near_real_time import Known, KnownContacts

FOLDER_TTL = 300.0


@dataclass
class UserSession:
    setup: UserSetup
    graph: GraphClient
    bc: BcClient
    store: Store
    known: Known
    folder_id: str | None = None
    folder_until: float = 0.0  # time.monotonic() up to which `folder_id` may be reused

    @classmethod
    def fresh(cls, setup: UserSetup, *, graph: GraphClient, bc: BcClient,
              store: Store) -> UserSession:
        # A one-shot run's session ends with it: copying the versions it sees and writes would
        # only cost memory (a Full sync writes 100,000 contacts; issue 15's RSS bound).
        known = Known(bc, graph, setup.mailbox, KnownContacts(0), KnownContacts(0))
        return cls(setup, graph, bc, store, known)

    def refuse_stopped(self) -> None:
        """A setup sharing another's folder never syncs, whichever path asks (the last guard)."""
        if self.setup.stopped_reason:
            raise SetupStoppedError(self.setup.stopped_reason)

    async def folder(self, dry_run: bool, *, cached: bool = False) -> str | None:
        """The user's folder id; `cached` (the near-real-time path) may answer from this session,
        while Sync and Full sync always look (and so recreate a folder the user deleted). A dry
        run creates nothing: None when the folder does not exist yet."""
        mailbox, name = self.setup.mailbox, self.setup.folder_name
        if dry_run:
            for folder in await self.graph.list_folders(mailbox):
                if str(folder.get("displayName", "")).lower() == name.lower():
                    return str(folder["id"])
            return None
        if cached and self.folder_id is not None and self.folder_until > time.monotonic():
            return self.folder_id
        self.folder_id = await self.graph.find_or_create_folder(mailbox, name)
        self.folder_until = time.monotonic() + FOLDER_TTL
        return self.folder_id


class Sessions:
    """The sessions of one long-lived caller, by user; one per set of services."""

    def __init__(self) -> None:
        self._users: dict[str, UserSession] = {}
        self._bc_known = KnownContacts()
        self._outlook_known = KnownContacts()

    def open(self, setup: UserSetup, *, graph: GraphClient, bc: BcClient,
             store: Store) -> UserSession:
        session = self._users.get(setup.user_id)
        if session is None or (session.graph, session.bc, session.store) != (graph, bc, store):
            if session is not None and (session.graph, session.bc) != (graph, bc):
                self._bc_known, self._outlook_known = KnownContacts(), KnownContacts()
            known = Known(bc, graph, setup.mailbox, self._bc_known, self._outlook_known)
            session = UserSession(setup, graph, bc, store, known)
            self._users[setup.user_id] = session
        if session.setup != setup:  # edited: its folder may be another one
            session.setup, session.folder_id = setup, None
            session.known.mailbox = setup.mailbox
        return session
