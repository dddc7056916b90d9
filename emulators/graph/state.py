"""In-memory mailbox store: users, contact folders, contacts, and the change log delta reads.

Single-threaded by design: everything runs on the server's event loop (the `GraphEmulator`
helpers hop onto it from test threads), so no locks. Writes bump a global sequence number;
each folder keeps `changes` (id -> last seq, in seq order) for delta and indexes by email and
by extended-property value for the two `$filter` forms Graph documents for contacts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GraphEmulatorConfig
from .model import (
    NAME_PROPS,
    Contact,
    Folder,
    GraphError,
    User,
    compose_display_name,
    empty_contact,
    new_change_key,
    new_folder_id,
    new_guid,
    new_item_id,
    normalize_contact_body,
    not_found,
    now_iso,
    parse_ext_props,
    rest_id,
)


@dataclass(frozen=True, slots=True)
class Change:
    user_id: str
    folder_id: str
    contact_id: str
    change_type: str  # created | updated | deleted
    etag: str


def _strip_etag(value: str) -> str:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v.strip('"')


class GraphState:
    def __init__(self, config: GraphEmulatorConfig) -> None:
        self.config = config
        self.users: dict[str, User] = {}
        self._by_upn: dict[str, str] = {}
        self.folders: dict[str, Folder] = {}
        self.contacts: dict[str, Contact] = {}
        self.seq = 0
        self.listeners: list[Callable[[Change], None]] = []

    # ---- users -------------------------------------------------------------------------------
    def add_user(
        self, upn: str, display_name: str | None = None, user_id: str | None = None
    ) -> User:
        if upn.lower() in self._by_upn:
            return self.users[self._by_upn[upn.lower()]]
        uid = user_id or new_guid()
        root = Folder(new_folder_id(), uid, "Contacts", "")
        self.folders[root.id] = root
        user = User(uid, upn, display_name or upn.split("@")[0], root.id)
        self.users[uid] = user
        self._by_upn[upn.lower()] = uid
        return user

    def find_user(self, key: str) -> User | None:
        user = self.users.get(key)
        if user is None:
            uid = self._by_upn.get(key.lower())
            user = self.users.get(uid) if uid else None
        return user

    def user(self, key: str) -> User:
        user = self.find_user(key)
        if user is None:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        return user

    # ---- folders -----------------------------------------------------------------------------
    def folder(self, user: User, folder_id: str) -> Folder:
        f = self.folders.get(folder_id)
        if f is None and folder_id.lower() == "contacts":  # well-known name of the default
            f = self.folders[user.root_folder_id]
        if f is None or f.user_id != user.id:
            raise not_found()
        return f

    def child_folders(self, user: User, parent_id: str | None = None) -> list[Folder]:
        parent = parent_id or user.root_folder_id
        return [
            f
            for f in self.folders.values()
            if f.user_id == user.id and f.parent_folder_id == parent
        ]

    def create_folder(self, user: User, name: Any, parent_id: str | None = None) -> Folder:
        if not isinstance(name, str) or not name.strip():
            raise GraphError(400, "ErrorInvalidRequest", "displayName is required.")
        parent = self.folder(user, parent_id or user.root_folder_id)
        if any(f.display_name.lower() == name.lower() for f in self.child_folders(user, parent.id)):
            # Exchange refuses sibling folders with the same name.
            raise GraphError(
                409, "ErrorFolderExists", "A folder with the specified name already exists."
            )
        f = Folder(new_folder_id(), user.id, name, parent.id)
        self.folders[f.id] = f
        return f

    def delete_folder(self, user: User, folder_id: str) -> None:
        f = self.folder(user, folder_id)
        if f.id == user.root_folder_id:
            raise GraphError(
                403, "ErrorDeleteDistinguishedFolder", "Distinguished folders cannot be deleted."
            )
        for child in self.child_folders(user, f.id):
            self.delete_folder(user, child.id)
        for cid in list(f.contacts):
            self._remove(self.contacts[cid], notify=True)
        del self.folders[f.id]

    # ---- contacts ----------------------------------------------------------------------------
    def contact(self, user: User, contact_id: str, folder: Folder | None = None) -> Contact:
        """The contact named by either id form (REST or immutable), as Graph accepts both."""
        c = self.contacts.get(rest_id(contact_id))
        if c is None or c.user_id != user.id or (folder is not None and c.folder_id != folder.id):
            raise not_found()
        return c

    def create_contact(self, user: User, folder: Folder, body: Any) -> Contact:
        fields, ext = normalize_contact_body(
            body, strict=self.config.strict, max_emails=self.config.max_email_addresses
        )
        now = now_iso()
        data = empty_contact()
        data.update(fields)
        cid = new_item_id()
        data.update(
            id=cid,
            createdDateTime=now,
            lastModifiedDateTime=now,
            changeKey=new_change_key(),
            parentFolderId=folder.id,
        )
        if not data.get("displayName"):
            data["displayName"] = compose_display_name(data)
        c = Contact(cid, user.id, folder.id, data, ext)
        self.contacts[cid] = c
        folder.contacts[cid] = None
        folder._order = None
        self._index(folder, c)
        self._touch(folder, c, "created")
        return c

    def update_contact(
        self,
        user: User,
        contact_id: str,
        body: Any,
        if_match: str | None = None,
        folder: Folder | None = None,
    ) -> Contact:
        c = self.contact(user, contact_id, folder)
        self.check_if_match(c, if_match)
        fields, ext = normalize_contact_body(
            body, strict=self.config.strict, max_emails=self.config.max_email_addresses
        )
        f = self.folders[c.folder_id]
        self._unindex(f, c)
        names_changed = any(k in fields and fields[k] != c.data.get(k) for k in NAME_PROPS)
        c.data.update(fields)
        if names_changed and "displayName" not in fields:
            # Outlook regenerates displayName when name parts change (reference 1.1).
            c.data["displayName"] = compose_display_name(c.data)
        c.ext.update(ext)
        c.data["changeKey"] = new_change_key()
        c.data["lastModifiedDateTime"] = now_iso()
        c.invalidate()
        self._index(f, c)
        self._touch(f, c, "updated")
        return c

    def delete_contact(
        self, user: User, contact_id: str, if_match: str | None = None, folder: Folder | None = None
    ) -> None:
        c = self.contact(user, contact_id, folder)
        self.check_if_match(c, if_match)
        self._remove(c, notify=True)

    def check_if_match(self, c: Contact, if_match: str | None) -> None:
        if if_match is None or if_match.strip() == "*":
            return
        if _strip_etag(if_match) != c.change_key:
            raise GraphError(
                self.config.stale_change_key_status,
                "ErrorIrresolvableConflict",
                "The send or update operation could not be performed because the change key "
                "passed in the request does not match the current change key for the item.",
            )

    def _remove(self, c: Contact, *, notify: bool) -> None:
        f = self.folders[c.folder_id]
        self._unindex(f, c)
        del self.contacts[c.id]
        f.contacts.pop(c.id, None)
        f._order = None
        if notify:
            self._touch(f, c, "deleted")

    def _touch(self, f: Folder, c: Contact, change_type: str) -> None:
        self.seq += 1
        c.seq = self.seq
        f.changes.pop(c.id, None)  # re-insert at the end: `changes` stays in seq order
        f.changes[c.id] = self.seq
        change = Change(c.user_id, f.id, c.id, change_type, c.etag)
        for listener in self.listeners:
            listener(change)

    def _index(self, f: Folder, c: Contact) -> None:
        for addr in c.emails():
            f.by_email.setdefault(addr, set()).add(c.id)
        for key, (_, value) in c.ext.items():
            f.by_ext.setdefault((key, value.lower()), set()).add(c.id)

    def _unindex(self, f: Folder, c: Contact) -> None:
        for addr in c.emails():
            ids = f.by_email.get(addr)
            if ids is not None:
                ids.discard(c.id)
                if not ids:
                    del f.by_email[addr]
        for key, (_, value) in c.ext.items():
            ids = f.by_ext.get((key, value.lower()))
            if ids is not None:
                ids.discard(c.id)
                if not ids:
                    del f.by_ext[(key, value.lower())]

    def changed_since(self, f: Folder, since: int) -> list[str]:
        """Ids changed after `since`, oldest first: walks back from the newest change."""
        out: list[str] = []
        for cid, seq in reversed(f.changes.items()):
            if seq <= since:
                break
            out.append(cid)
        out.reverse()
        return out

    # ---- snapshot ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "users": [
                u.to_json() | {"rootFolderId": u.root_folder_id} for u in self.users.values()
            ],
            "folders": [f.to_json() | {"userId": f.user_id} for f in self.folders.values()],
            "contacts": [
                {
                    "userId": c.user_id,
                    "folderId": c.folder_id,
                    "data": c.data,
                    "ext": [{"id": i, "value": v} for i, v in c.ext.values()],
                }
                for c in self.contacts.values()
            ],
        }

    def load_json(self, doc: dict[str, Any]) -> None:
        """Replace the state. Delta tokens issued before do not survive (410 on use)."""
        self.users.clear()
        self._by_upn.clear()
        self.folders.clear()
        self.contacts.clear()
        self.seq = int(doc.get("seq", 0))
        for u in doc["users"]:
            user = User(u["id"], u["userPrincipalName"], u["displayName"], u["rootFolderId"])
            self.users[user.id] = user
            self._by_upn[user.user_principal_name.lower()] = user.id
        for f in doc["folders"]:
            self.folders[f["id"]] = Folder(
                f["id"], f["userId"], f["displayName"], f["parentFolderId"]
            )
        for item in doc["contacts"]:
            c = Contact(item["data"]["id"], item["userId"], item["folderId"], item["data"])
            c.ext = parse_ext_props(item.get("ext"))
            folder = self.folders[c.folder_id]
            self.seq += 1
            c.seq = self.seq
            self.contacts[c.id] = c
            folder.contacts[c.id] = None
            folder.changes[c.id] = c.seq
            self._index(folder, c)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    def load(self, path: str | Path) -> None:
        self.load_json(json.loads(Path(path).read_text()))

    def iter_contacts(self, folder: Folder, ids: Iterable[str]) -> Iterable[Contact]:
        contacts = self.contacts
        for cid in ids:
            c = contacts.get(cid)
            if c is not None:
                yield c
