"""Full sync's reads (and a user's first Sync): the BC contacts the user's filter can select and
the whole Outlook folder, as compact records (engine/compact.py); a contact with nothing to
write is kept as a stub. Memory at 100,000 contacts is this module's concern.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from contactsync.clients.bc import BcClient
from contactsync.clients.graph import GraphClient
from contactsync.engine import mapping as m
from contactsync.engine.bcfilter import ContactFilter
from contactsync.engine.compact import Compactor, graph_stub
from contactsync.engine.echoes import bc_echo
from contactsync.engine.links import Link, canon_bc_id
from contactsync.engine.mapping import BC_SELECT, GRAPH_SELECT
from contactsync.engine.planner import BcSnapshot, OutlookSnapshot
from contactsync.schemas.setup import UserSetup
from contactsync.store import Store
from contactsync.sync.bulk_gc import keep_out_of_gc

_TURN_EVERY = 200  # contacts converted between two turns of the event loop (~2 ms)
FULL_LISTING_PAGE = 5_000  # BC contacts per page of a full listing (see read_full)


async def compacted(
    pages: AsyncIterator[list[Any]],
    compact: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> list[Mapping[str, Any]]:
    """A whole listing as compact records (engine/compact.py), page by page: a full sync holds
    both sides of up to 100,000 pairs, and a page's dicts go as soon as they are converted."""
    kept: list[Mapping[str, Any]] = []
    async for page in pages:
        # In place: each wire dict is freed as soon as its record exists, so a page's dicts
        # and its records are never all alive at once.
        for i in range(len(page)):
            page[i] = compact(page[i])
            if i % _TURN_EVERY == _TURN_EVERY - 1:
                # The loop's turn: the next page's request (prefetched by the client) goes
                # out and its answer comes in while this page is converted, not after.
                await asyncio.sleep(0)
        kept.extend(page)
        del page
        keep_out_of_gc()  # the cyclic GC need not scan these records again (bulk_gc.py)
    return kept


async def list_folder(
    graph: GraphClient, mailbox: str, folder_id: str, bc_snap: BcSnapshot, links: Sequence[Link]
) -> OutlookSnapshot:
    """The whole folder, compact (engine/compact.py). A contact whose changeKey and BC contact's
    ETag (or modified time) are still its link's has nothing to write: a stub is kept."""
    by_graph_id = {link.graph_id: link for link in links if link.graph_change_key}
    bc_by_id = {canon_bc_id(m.as_text(c.get("id"))): c for c in bc_snap.contacts}
    full = Compactor().graph
    shared: dict[Any, Any] = {}

    def compact(contact: Mapping[str, Any]) -> Mapping[str, Any]:
        link = by_graph_id.get(contact.get("id"))  # type: ignore[arg-type]
        if link is not None:
            bc_contact = bc_by_id.get(link.bc_id)
            if bc_contact is not None and bc_echo(bc_contact, link):
                stub = graph_stub(contact, link.graph_id, link.graph_change_key, link.bc_id,
                                  bc_email=bc_contact.get("email"), shared=shared)
                if stub is not None:
                    return stub
        return full(contact)

    pages = graph.iter_contact_pages(mailbox, folder_id, select=GRAPH_SELECT)
    return OutlookSnapshot.full(await compacted(pages, compact))


async def read_full(
    graph: GraphClient, bc: BcClient, store: Store, setup: UserSetup, folder_id: str | None,
) -> tuple[BcSnapshot, OutlookSnapshot, list[Link]]:
    """Full sync's reads: the BC contacts the user's filter can select (as OData where the
    translation is exact), then the whole folder (stubs where nothing moved), both compact;
    and the user's links, loaded while BC serves the first pages."""
    odata = ContactFilter.parse(setup.contact_filter).to_odata()
    select = sorted({*BC_SELECT, *setup.contact_filter})  # the filter's fields, evaluated
    # Smaller pages than BC's 20,000: the client holds the page being converted and the next
    # one (prefetched). Measured peak RSS at 100,000 contacts, no-change run: 10,000 a page
    # 414 MB, 5,000 311 MB, 2,000 309 MB (the peak moves to planning below 5,000).
    pages = bc.iter_contact_pages(odata, page_size=FULL_LISTING_PAGE, select=select)
    links, listing = await _links_beside_first_page(
        pages, lambda: store.links.for_user(setup.user_id), in_thread=store.threads_may_share
    )
    compact_bc = Compactor({link.bc_id: link for link in links}).bc
    bc_snap = BcSnapshot.full(await compacted(listing, compact_bc))
    if folder_id is None:  # dry run, folder not created yet: it would be empty
        return bc_snap, OutlookSnapshot.full([]), links
    return bc_snap, await list_folder(graph, setup.mailbox, folder_id, bc_snap, links), links


async def _links_beside_first_page(
    pages: AsyncGenerator[list[Any], None], load_links: Callable[[], list[Link]], *,
    in_thread: bool,
) -> tuple[list[Link], AsyncIterator[list[Any]]]:
    """The links, loaded in a worker thread while BC serves the listing's first page (and,
    prefetched, the second): 100,000 rows take ~0.8 s that were spent waiting for BC before.
    The pages are converted only after, since BC records share the links' strings."""
    if not in_thread:
        return load_links(), pages
    loading = asyncio.ensure_future(asyncio.to_thread(load_links))
    try:
        first = await anext(pages, None)
    except BaseException:
        await asyncio.wait([loading])  # the thread cannot be stopped: let it end first
        raise
    try:
        links = await loading
    except BaseException:
        await pages.aclose()  # drops the prefetched page's request
        raise
    return links, _prepended(first, pages)


async def _prepended(
    first: list[Any] | None, rest: AsyncIterator[list[Any]]
) -> AsyncIterator[list[Any]]:
    if first is None:
        return
    yield first
    del first  # converted in place by the caller: not kept here while the rest arrive
    async for page in rest:
        yield page
