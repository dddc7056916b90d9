"""What the near-real-time path (`runner.apply_changes`) adds to a Sync: fewer reads, no echoes.

- **Own links only.** A change needs the links of the contacts it names (by BC id, Graph id or
  our BC-id tag), not the user's thousands. A complete listing loads them all; so does a
  plan the mass-delete rail stops on the change's links (plan_loop), since the rail weighs
  the removals against the whole folder: a batch of fifty edits loads fifty links, not 5,000.
- **Stale snapshots.** A BC snapshot older than the version the link holds is not a change:
  the planner decides that (engine/echoes.py `bc_stale`), as it decides every echo.
- **Known versions instead of reads.** The planner asks to read the other side of a pair
  (NeedsRead) before writing to it. When we hold that contact as last read or written, at the
  very version the link recorded, it is used instead of a GET, and the write carries that
  version as If-Match (BC ETag, Graph changeKey): if someone changed the contact meanwhile, the
  service refuses (412; a contact deleted meanwhile answers 404, handled the same way) and
  `replan_conflicts` reads the pair afresh and plans it again (BC is master: a conflict
  pushes BC's values and audits Outlook's). Optimistic concurrency, so a write never rests
  on a version nobody checked.
- **Synced content after a restart.** A process that holds nothing yet (a restarted applier,
  a Full sync run in another process) answers the same reads from the link rows: each keeps
  the pair's content as last synced at the link's versions (engine/synced.py), loaded for the
  change's own links in one query on the first miss. The same If-Match guard applies; a link
  without content (saved before it was kept) is read by GET as before.
- **Only where a write checks it.** A version known (either way) answers a read only for a
  pair the plan then writes on that side with If-Match. A BC contact the plan acts on without
  writing it (recreated in Outlook after the person deleted it there; a tagged contact linked
  again) is read as BC holds it now (`ReadRequest.current_bc_ids`): one deleted in BC meanwhile
  must not come back from what we knew of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.errors import NotFound
from contactsync.clients.graph import GraphClient, with_bc_id
from contactsync.engine import mapping as m
from contactsync.engine.actions import ReadRequest
from contactsync.engine.links import Link, canon_bc_id
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot
from contactsync.engine.synced import bc_at_link, outlook_at_link
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.sync.reads import Reader, Snapshots

Contact = Mapping[str, Any]
KNOWN_MAX = 5000  # contacts held per side: a few MB, the hot set of a busy tenant


class KnownContacts:
    """Contacts as last read or written, by key, least recently used out first."""

    def __init__(self, max_items: int = KNOWN_MAX) -> None:
        self.max_items = max_items
        self._items: OrderedDict[Any, Contact] = OrderedDict()
        self.hits = self.misses = 0

    def put(self, key: Any, contact: Contact) -> None:
        self._items[key] = contact
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def at_version(self, key: Any, version: str, version_of: Any) -> Contact | None:
        """The contact if held at exactly `version` (never for an empty version)."""
        contact = self._items.get(key)
        if contact is None or not version or version_of(contact) != version:
            self.misses += 1
            return None
        self.hits += 1
        return contact

    @property
    def keeps(self) -> bool:
        """Whether anything is kept at all: a one-shot session's cache holds nothing, so
        what it sees is not even copied (sync/session.py)."""
        return self.max_items > 0


def _bc_version(contact: Contact) -> str:
    return m.as_text(contact.get("@odata.etag"))


class Known:
    """One user's view of both caches (BC by contact id, Outlook by mailbox and contact id)."""

    def __init__(self, bc: BcClient, graph: GraphClient, mailbox: str, bc_known: KnownContacts,
                 outlook_known: KnownContacts) -> None:
        """The caches are the session's (sync/session.py): kept as long as it is."""
        self.bc, self.outlook = bc_known, outlook_known
        self.mailbox = mailbox
        self.bc_client, self.graph_client = bc, graph

    def saw_bc(self, contacts: Iterable[Contact]) -> None:
        if not self.bc.keeps:
            return
        for contact in contacts:
            if _bc_version(contact):
                self.bc.put(m.as_text(contact.get("id")), contact)

    def saw_outlook(self, contacts: Iterable[Contact], bc_id: str = "") -> None:
        if not self.outlook.keeps:
            return
        for contact in contacts:
            key = m.graph_change_key(contact)
            if not key:
                continue
            entry = dict(contact)
            # The planner sends this as If-Match: a cached copy must carry it.
            entry.setdefault("@odata.etag", f'W/"{key}"')
            if bc_id and not m.bc_id_of(entry):  # a PATCH answer leaves our tag out
                entry["singleValueExtendedProperties"] = with_bc_id(
                    {}, bc_id)["singleValueExtendedProperties"]
            self.outlook.put((self.mailbox, m.as_text(contact.get("id"))), entry)

    def written(self, side: str, contact: Contact, bc_id: str) -> None:
        """The executor's hook: what a write answered is the newest version we know."""
        if side == "bc":
            self.saw_bc([contact])
        else:
            self.saw_outlook([contact], bc_id)

    def bc_at(self, link: Link | None, bc_id: str) -> Contact | None:
        return self.bc.at_version(bc_id, link.bc_etag if link else "", _bc_version)

    def outlook_at(self, link: Link | None, graph_id: str) -> Contact | None:
        return self.outlook.at_version((self.mailbox, graph_id),
                                       link.graph_change_key if link else "", m.graph_change_key)


def links_for(store: Store, setup: UserSetup, bc_snap: BcSnapshot | None,
              outlook_snap: OutlookSnapshot | None) -> list[Link]:
    """The links this change can touch (all of the user's for a complete listing). Where the
    delete rail stops the plan, it is planned again with all of them (`every_link`)."""
    bc_snap, outlook_snap = bc_snap or BcSnapshot(), outlook_snap or OutlookSnapshot()
    if bc_snap.complete or outlook_snap.complete:
        return store.links.for_user(setup.user_id)
    bc_ids = {m.as_text(c.get("id")) for c in bc_snap.contacts} | set(bc_snap.deleted_ids)
    bc_ids |= {tag for c in outlook_snap.contacts if (tag := m.bc_id_of(c))}
    graph_ids = {m.as_text(c.get("id")) for c in outlook_snap.contacts}
    graph_ids |= set(outlook_snap.removed_ids)
    return store.links.for_ids(setup.user_id, bc_ids, graph_ids)


def every_link(store: Store, setup: UserSetup) -> Callable[[], list[Link]]:
    """All of the user's links, loaded only when called (plan_loop: a plan the rail stops)."""
    return functools.partial(store.links.for_user, setup.user_id)


class SyncedSides:
    """One user's link rows' synced content (engine/synced.py): what the other side held when
    we last synced it, as a contact at the link's version. Read from the store only for the
    links a read asks about (never with the user's links: a Full sync's 100,000)."""

    def __init__(self, store: Store, setup: UserSetup) -> None:
        self.store, self.user_id = store, setup.user_id
        self.filter_fields = tuple(setup.contact_filter)  # a synced BC contact must hold them

    def answer(self, bc_links: Mapping[str, Link],
               graph_links: Mapping[str, Link]) -> tuple[dict[str, Contact], dict[str, Contact]]:
        """Contacts by the ids asked (BC ids, Graph ids) that the links' content can answer."""
        wanted = {link.bc_id for link in (*bc_links.values(), *graph_links.values())}
        if not wanted:
            return {}, {}
        texts = self.store.links.synced_contents(self.user_id, wanted)
        bc_found: dict[str, Contact] = {i: c for i, link in bc_links.items()
                    if (c := bc_at_link(link, texts.get(link.bc_id), self.filter_fields))}
        out_found: dict[str, Contact] = {i: c for i, link in graph_links.items()
                     if (c := outlook_at_link(link, texts.get(link.bc_id)))}
        return bc_found, out_found


class KnownReader(Reader):
    """`_plan_and_apply`'s reader: reads by id answered from known versions, else from the
    links' synced content (`synced`), else by GET; searches as any reader does."""

    def __init__(self, known: Known, links: Sequence[Link], folder_id: str | None,
                 synced: SyncedSides | None = None) -> None:
        super().__init__(known.bc_client, known.graph_client, known.mailbox, folder_id)
        self.known, self.synced = known, synced
        self.by_bc = {link.bc_id: link for link in links}
        self.by_graph = {link.graph_id: link for link in links}

    async def __call__(self, request: ReadRequest, bc_snap: BcSnapshot,
                       outlook_snap: OutlookSnapshot) -> Snapshots:
        read = len(outlook_snap.contacts)
        bc_snap, outlook_snap = await super().__call__(request, bc_snap, outlook_snap)
        self.known.saw_outlook(outlook_snap.contacts[read:])  # what the searches found
        return bc_snap, outlook_snap

    async def by_id(self, request: ReadRequest, bc_snap: BcSnapshot,
                    outlook_snap: OutlookSnapshot) -> Snapshots:
        # Reads that are needed go out together: the clients' budgets pace them.
        bc, graph, mailbox = self.bc, self.graph, self.mailbox
        current = request.current_bc_ids  # acted on without a write to them: never a known one
        bc_read = [i for i in request.bc_ids if i in current
                   or self.known.bc_at(self.by_bc.get(canon_bc_id(i)), i) is None]
        out_read = [i for i in request.graph_ids
                    if self.known.outlook_at(self.by_graph.get(i), i) is None]
        bc_synced, out_synced = self._synced([i for i in bc_read if i not in current], out_read)
        bc_read = [i for i in bc_read if i not in bc_synced]
        out_read = [i for i in out_read if i not in out_synced]
        bc_got, out_got = await asyncio.gather(
            asyncio.gather(*(_found(bc.get_contact(i)) for i in bc_read)),
            asyncio.gather(*(_found(graph.get_contact(mailbox, i)) for i in out_read)),
        )
        self.known.saw_bc(c for c in bc_got if c is not None)
        self.known.saw_outlook(c for c in out_got if c is not None)
        bc_found, bc_gone = _answers(
            request.bc_ids, {**dict(zip(bc_read, bc_got, strict=True)), **bc_synced},
            lambda i: self.known.bc_at(self.by_bc.get(i), i),
            bc_snap.contacts, bc_snap.deleted_ids)
        out_found, out_gone = _answers(
            request.graph_ids, {**dict(zip(out_read, out_got, strict=True)), **out_synced},
            lambda i: self.known.outlook_at(self.by_graph.get(i), i),
            outlook_snap.contacts, outlook_snap.removed_ids)
        return (
            dataclasses.replace(bc_snap, contacts=tuple(bc_found), deleted_ids=frozenset(bc_gone)),
            dataclasses.replace(outlook_snap, contacts=tuple(out_found),
                                removed_ids=frozenset(out_gone)),
        )


    def _synced(self, bc_ids: Sequence[str],
                graph_ids: Sequence[str]) -> tuple[dict[str, Contact], dict[str, Contact]]:
        """What the links' synced content answers of the reads left (linked contacts only)."""
        if self.synced is None:
            return {}, {}
        bc_links = {i: link for i in bc_ids if (link := self.by_bc.get(canon_bc_id(i)))}
        graph_links = {i: link for i in graph_ids if (link := self.by_graph.get(i))}
        return self.synced.answer(bc_links, graph_links)


async def _found(read: Awaitable[Contact]) -> Contact | None:
    try:
        return await read
    except NotFound:
        return None


async def read_pairs(pairs: Iterable[tuple[str, str]], *, bc: BcClient, graph: GraphClient,
                     known: Known) -> tuple[BcSnapshot, OutlookSnapshot]:
    """Both sides of these (BC id, Graph id) pairs, read afresh (after a 412)."""
    bc_found: list[Contact] = []
    out_found: list[Contact] = []
    bc_gone: set[str] = set()
    out_gone: set[str] = set()
    for bc_id, graph_id in pairs:
        if bc_id:
            try:
                bc_found.append(await bc.get_contact(bc_id))
            except NotFound:
                bc_gone.add(bc_id)
        if graph_id:
            try:
                out_found.append(await graph.get_contact(known.mailbox, graph_id))
            except NotFound:
                out_gone.add(graph_id)
    known.saw_bc(bc_found)
    known.saw_outlook(out_found)
    return BcSnapshot.changes(bc_found, bc_gone), OutlookSnapshot(
        tuple(out_found), complete=False, removed_ids=frozenset(out_gone))


def _answers(
    wanted: Iterable[str], fetched: Mapping[str, Contact | None],
    known: Callable[[str], Contact | None], contacts: Iterable[Contact], gone: Iterable[str],
) -> tuple[list[Contact], set[str]]:
    """One side's snapshot after the reads: each wanted id as fetched now, else as held at the
    link's version; an id neither answers is gone."""
    found, missing = list(contacts), set(gone)
    for contact_id in wanted:
        contact = fetched[contact_id] if contact_id in fetched else known(contact_id)
        if contact is None:
            missing.add(contact_id)
        else:
            found.append(contact)
    return found, missing
