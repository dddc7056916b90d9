"""Graph's users, contact folders and contacts: read, find, create one, update, delete.

Every contact we write carries the BC contact id in a single-value extended property,
`BC_ID_PROPERTY` (a named property in our own GUID namespace, reference 1.6). Reads that
return contacts expand it, so `bc_id_of(contact)` gives it back; `find_by_bc_id` filters on it.

A create is never repeated blindly: after an ambiguous failure (5xx, timeout, dropped
connection) the contact is looked up by its BC id first and created only if absent.
GET/PATCH/DELETE retry freely; a DELETE that finds nothing on a retry counts as done. A PATCH
with If-Match retried after an ambiguous failure may answer Conflict because our own first
attempt landed; callers treat Conflict as "re-read and re-plan" anyway.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import httpx
from kiota_abstractions.method import Method
from kiota_abstractions.request_information import RequestInformation

from contactsync.clients.errors import Conflict, NotFound
from contactsync.clients.graph.transport import GraphTransport, Json, _odata_str, _q, _Response
from contactsync.engine.mapping import BC_ID_PROPERTY  # one tag, shared with the planner


def bc_id_of(contact: Mapping[str, Any]) -> str | None:
    """The BC contact id tag of a contact read with the property expanded, as stored, else None
    (the engine compares it in canonical form: `mapping.bc_id_of`)."""
    for prop in contact.get("singleValueExtendedProperties") or ():
        if str(prop.get("id", "")).lower() == BC_ID_PROPERTY.lower():
            value = prop.get("value")
            return str(value) if value is not None else None
    return None


def with_bc_id(fields: Mapping[str, Any], bc_id: str) -> Json:
    """`fields` plus the BC id tag (replacing any tag already in the body)."""
    body = dict(fields)
    props = [
        p
        for p in body.get("singleValueExtendedProperties") or ()
        if str(p.get("id", "")).lower() != BC_ID_PROPERTY.lower()
    ]
    props.append({"id": BC_ID_PROPERTY, "value": bc_id})
    body["singleValueExtendedProperties"] = props
    return body


def update_body(fields: Mapping[str, Any], bc_id: str | None) -> Json:
    """A PATCH's body: the fields, tagged with `bc_id` when given (one shape, single or batched)."""
    return with_bc_id(fields, bc_id) if bc_id is not None else dict(fields)


def if_match_header(version: str) -> str:
    """If-Match for a changeKey or an `@odata.etag` (already `W/"..."`), as Outlook compares it."""
    return version if version.startswith(("W/", '"')) else f'W/"{version}"'



# Reads that return contacts expand our BC-id tag.
EXPAND_BC_ID = f"singleValueExtendedProperties($filter=id eq {_odata_str(BC_ID_PROPERTY)})"


class ContactsApi(GraphTransport):
    # ---- users -------------------------------------------------------------------------------
    async def get_user(self, mailbox: str) -> Json:
        """The user behind a mailbox address or id (`id`, `userPrincipalName`, `mail`):
        `GET /users/{id | userPrincipalName}` ("Get user", learn.microsoft.com/graph/api/
        user-get). NotFound for no such user; an app needs User.Read.All to read users."""
        ri = self._request(Method.GET, f"/users/{_q(mailbox)}",
                           {"$select": ["id", "userPrincipalName", "mail"]})
        resp = await self._send(mailbox, lambda: ri)
        return cast(Json, resp.body)

    # ---- folders -----------------------------------------------------------------------------
    async def list_folders(self, mailbox: str) -> list[Json]:
        return await self._get_pages(
            mailbox, self._request(Method.GET, f"/users/{_q(mailbox)}/contactFolders"))

    async def find_or_create_folder(self, mailbox: str, name: str = "Business Central") -> str:
        """The id of the top-level contact folder called `name`, created if missing."""

        async def find() -> str | None:
            for folder in await self.list_folders(mailbox):
                if str(folder.get("displayName", "")).casefold() == name.casefold():
                    return str(folder["id"])
            return None

        found = await find()
        if found:
            return found
        async def find_response() -> _Response | None:
            fid = await find()
            return _Response(201, httpx.Headers(), {"id": fid}) if fid else None

        try:
            resp = await self._send(
                mailbox,
                lambda: self._request(Method.POST, f"/users/{_q(mailbox)}/contactFolders",
                                      body={"displayName": name}),
                idempotent=False,
                find_existing=find_response,
            )
        except Conflict:  # someone created it meanwhile (ErrorFolderExists)
            fid = await find()
            if fid is None:
                raise
            return fid
        return str(resp.body["id"])

    # ---- contacts ----------------------------------------------------------------------------
    @staticmethod
    def _folder_contacts(mailbox: str, folder_id: str) -> str:
        return f"/users/{_q(mailbox)}/contactFolders/{_q(folder_id)}/contacts"

    @staticmethod
    def _contact(mailbox: str, contact_id: str) -> str:
        return f"/users/{_q(mailbox)}/contacts/{_q(contact_id)}"

    async def list_contacts(
        self, mailbox: str, folder_id: str, select: Sequence[str] | None = None
    ) -> list[Json]:
        """Every contact in the folder (all pages), each with the BC-id property expanded."""
        items: list[Json] = []
        async for page in self.iter_contact_pages(mailbox, folder_id, select):
            items.extend(page)
        return items

    def iter_contact_pages(
        self, mailbox: str, folder_id: str, select: Sequence[str] | None = None
    ) -> AsyncGenerator[list[Json], None]:
        """`list_contacts` page by page, so a caller can keep less than the whole listing."""
        ri = self._request(Method.GET, self._folder_contacts(mailbox, folder_id), {
            "$top": self.options.list_page_size, "$expand": EXPAND_BC_ID,
            "$select": list(select) if select else None})
        return self._iter_pages(mailbox, ri)

    async def find_by_bc_id(self, mailbox: str, folder_id: str, bc_id: str) -> Json | None:
        """The contact tagged with `bc_id` in the folder (the first, if a bug made several)."""
        found = await self._find(mailbox, folder_id, bc_id)
        return found[0] if found else None

    async def _find(self, mailbox: str, folder_id: str, bc_id: str) -> list[Json]:
        flt = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq {_odata_str(BC_ID_PROPERTY)} "
            f"and ep/value eq {_odata_str(bc_id)})"
        )
        return await self._get_pages(mailbox, self._request(
            Method.GET, self._folder_contacts(mailbox, folder_id),
            {"$filter": flt, "$expand": EXPAND_BC_ID, "$top": 10}))

    async def find_by_email(self, mailbox: str, folder_id: str, address: str) -> list[Json]:
        """Contacts of the folder with this email address (Graph matches it case-insensitively)."""
        flt = f"emailAddresses/any(a:a/address eq {_odata_str(address.strip())})"
        return await self._get_pages(mailbox, self._request(
            Method.GET, self._folder_contacts(mailbox, folder_id),
            {"$filter": flt, "$expand": EXPAND_BC_ID, "$top": 50}))

    async def get_contact(self, mailbox: str, contact_id: str) -> Json:
        ri = self._request(Method.GET, self._contact(mailbox, contact_id),
                           {"$expand": EXPAND_BC_ID})
        resp = await self._send(mailbox, lambda: ri)
        return cast(Json, resp.body)

    async def update_contact(
        self,
        mailbox: str,
        contact_id: str,
        fields: Mapping[str, Any],
        *,
        if_match: str | None = None,
        bc_id: str | None = None,
    ) -> Json:
        """PATCH the given fields (send displayName too: Outlook may regenerate it). With
        `if_match` (a changeKey or an `@odata.etag`) a newer version gives Conflict."""
        body = update_body(fields, bc_id)
        path = self._contact(mailbox, contact_id)

        def build() -> RequestInformation:
            ri = self._request(Method.PATCH, path, body=body)
            if if_match:
                ri.headers.try_add("If-Match", if_match_header(if_match))
            return ri

        resp = await self._send(mailbox, build)
        return cast(Json, resp.body)

    async def delete_contact(
        self, mailbox: str, contact_id: str, *, if_match: str | None = None
    ) -> bool:
        """Delete; False if it was already gone (deletes are idempotent)."""
        path = self._contact(mailbox, contact_id)

        def build() -> RequestInformation:
            ri = self._request(Method.DELETE, path)
            if if_match:
                ri.headers.try_add("If-Match", if_match_header(if_match))
            return ri

        try:
            await self._send(mailbox, build)
        except NotFound:
            return False
        return True

    async def create_contact(
        self, mailbox: str, folder_id: str, bc_id: str, fields: Mapping[str, Any]
    ) -> Json:
        """Create one contact tagged with `bc_id` (never duplicated on an ambiguous failure)."""
        path = self._folder_contacts(mailbox, folder_id)
        body = with_bc_id(fields, bc_id)

        async def existing() -> _Response | None:
            found = await self.find_by_bc_id(mailbox, folder_id, bc_id)
            return _Response(200, httpx.Headers(), found) if found else None

        resp = await self._send(
            mailbox,
            lambda: self._request(Method.POST, path, body=body),
            idempotent=False,
            find_existing=existing,
        )
        return cast(Json, resp.body)
