"""Graph's delta query over a contact folder: every page, ids removed and changed."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

from kiota_abstractions.method import Method

from contactsync.clients.errors import Invalid
from contactsync.clients.graph.contacts import ContactsApi
from contactsync.clients.graph.transport import Json
from contactsync.clients.graph_errors import SERVICE


class DeltaResult(NamedTuple):
    changed: list[Json]  # full contacts (Outlook sends the whole item), `@odata.etag` included
    removed: list[str]  # ids with `@removed`
    delta_link: str




class DeltaApi(ContactsApi):
    async def delta(
        self, mailbox: str, folder_id: str, delta_link: str | None = None
    ) -> DeltaResult:
        """Changes in the folder since `delta_link` (all contacts when None), across all pages.

        Raises SyncStateExpired when Graph no longer knows the link: start again with None and
        reconcile by id / BC id.
        """
        if delta_link:
            first = self._url(delta_link)
        else:
            first = self._request(Method.GET, self._folder_contacts(mailbox, folder_id)
                                  + "/delta()")
        size = self.options.delta_page_size
        changed: dict[str, Json] = {}
        removed: dict[str, None] = {}
        page = await self._send(mailbox, lambda: first, delta=True, page_size=size)
        while True:
            for item in page.body.get("value") or []:
                cid = str(item.get("id"))
                if "@removed" in item:  # the same id may come several times; last one wins
                    changed.pop(cid, None)
                    removed[cid] = None
                else:
                    removed.pop(cid, None)
                    changed[cid] = item
            if page.body.get("@odata.deltaLink"):
                return DeltaResult(
                    list(changed.values()), list(removed), str(page.body["@odata.deltaLink"])
                )
            link = page.body.get("@odata.nextLink")
            if not link:
                raise Invalid("delta page without nextLink or deltaLink", service=SERVICE)

            page = await self._send(
                mailbox, partial(self._url, str(link)), delta=True, page_size=size
            )
