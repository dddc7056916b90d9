"""Compact, read-only contact records for full listings (100,000 contacts per user).

A JSON dict of a BC contact costs about 1.9 KB in memory and a Graph contact (with its nested
address, email and property dicts) about 2.6 KB; a full sync holds both sides of every pair at
once. A `Record` keeps the same wire-shaped data as a tuple of values behind a key index shared
by every record of its kind, nested objects become records or tuples too, and values that
repeat across contacts (type, city, country, categories, the BC-id property's name...) are
shared. It is a `Mapping`, so the planner and the field mapping read it exactly as they read
the wire dict it came from: `compact_bc(contact) == contact` (lists become tuples).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from operator import itemgetter
from typing import Any, ClassVar, Final

from contactsync.engine.fields import FIELDS, address_parts
from contactsync.engine.links import Link, canon_bc_id
from contactsync.engine.mapping import (
    BC_ID_PROPERTY,
    BC_SELECT,
    GRAPH_SELECT,
    bc_id_of,
    graph_change_key,
)

_ABSENT: Final = object()  # a key the wire dict did not have


class Record(Mapping[str, Any]):
    """A read-only mapping over a fixed key set; subclasses name the keys."""

    __slots__ = ("_values",)
    KEYS: ClassVar[tuple[str, ...]] = ()
    _INDEX: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls) -> None:
        cls._INDEX = {key: i for i, key in enumerate(cls.KEYS)}

    def __init__(self, values: tuple[Any, ...]) -> None:
        self._values = values

    def get(self, key: str, default: Any = None) -> Any:  # the hot path: keep it short
        index = self._INDEX.get(key)
        if index is None:
            return default
        value = self._values[index]
        return default if value is _ABSENT else value

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        index = self._INDEX.get(key) if isinstance(key, str) else None
        return index is not None and self._values[index] is not _ABSENT

    def __iter__(self) -> Iterator[str]:
        return (k for k, v in zip(self.KEYS, self._values, strict=True) if v is not _ABSENT)

    def __len__(self) -> int:
        return sum(1 for v in self._values if v is not _ABSENT)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


class _Shared:
    """Shares equal values between records (values that repeat across contacts). Bounded: past
    `LIMIT` distinct values it starts again, so all-distinct values cannot grow it for ever."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self.seen: dict[Any, Any] = {}

    def check(self) -> dict[Any, Any]:
        if len(self.seen) > self.LIMIT:
            self.seen.clear()
        return self.seen


class BcRecord(Record):
    __slots__ = ()
    KEYS = ("@odata.etag", *BC_SELECT)  # what a listing selects (the field table's)


class GraphRecord(Record):
    __slots__ = ()
    KEYS = ("@odata.etag", *GRAPH_SELECT, "singleValueExtendedProperties", "primaryEmailAddress")


class EmailRecord(Record):
    __slots__ = ()
    KEYS = ("name", "address")


class AddressRecord(Record):
    __slots__ = ()
    KEYS = address_parts(FIELDS)


class PropertyRecord(Record):
    __slots__ = ()
    KEYS = ("id", "value")


_BC_KEYS: Final = frozenset(BcRecord.KEYS)
_BC_ALL: Final = itemgetter(*BcRecord.KEYS)
# Fields whose values repeat across contacts (or are short codes): shared, not copied.
_BC_SHARED: Final = tuple(BcRecord._INDEX[k] for k in (
    "type", "jobTitle", "companyName", "addressLine2", "city", "state", "country",
    "postalCode", "website", "lastModifiedDateTime",
) if k in BcRecord._INDEX)  # fmt: skip
_BC_ID: Final = BcRecord._INDEX["id"]
_BC_ETAG: Final = BcRecord._INDEX["@odata.etag"]
_GRAPH_KEYS: Final = frozenset(GraphRecord.KEYS)
_GRAPH_SHARED: Final = tuple(GraphRecord._INDEX[k] for k in (
    "createdDateTime", "lastModifiedDateTime", "jobTitle", "companyName", "businessHomePage",
) if k in GraphRecord._INDEX)  # fmt: skip
_EMAIL_KEYS: Final = frozenset(EmailRecord.KEYS)
_ADDRESS_KEYS: Final = frozenset(AddressRecord.KEYS)
_PROPERTY_KEYS: Final = frozenset(PropertyRecord.KEYS)
_NESTED: Final = {
    "emailAddresses", "businessPhones", "businessAddress", "categories",
    "singleValueExtendedProperties", "primaryEmailAddress",
}  # fmt: skip


class Compactor:
    """Turns one listing's wire dicts into records. Keeps its shared values: use one per run.

    A dict of a shape its record kind does not know is returned as it is (nothing is lost)."""

    def __init__(self, links_by_bc_id: Mapping[str, Link] | None = None) -> None:
        """`links_by_bc_id`: the user's links; a BC contact's id and unchanged ETag then share
        the link's strings."""
        self._shared = _Shared()
        self._links = links_by_bc_id or {}

    def bc(self, contact: Mapping[str, Any]) -> Mapping[str, Any]:
        if type(contact) is not dict:
            return contact
        keys = contact.keys()
        if keys == _BC_KEYS:  # the usual case: every selected field, in C
            values = list(_BC_ALL(contact))
        elif keys <= _BC_KEYS:
            values = [contact.get(k, _ABSENT) for k in BcRecord.KEYS]
        else:
            return contact
        seen = self._shared.check()
        for i in _BC_SHARED:
            value = values[i]
            values[i] = seen.setdefault(value, value)
        link = self._links.get(values[_BC_ID])
        if link is not None:
            values[_BC_ID] = link.bc_id
            if values[_BC_ETAG] == link.bc_etag:
                values[_BC_ETAG] = link.bc_etag
        return BcRecord(tuple(values))

    def graph(self, contact: Mapping[str, Any]) -> Mapping[str, Any]:
        if type(contact) is not dict or not contact.keys() <= _GRAPH_KEYS:
            return contact
        values = [contact.get(k, _ABSENT) for k in GraphRecord.KEYS]
        seen = self._shared.check()
        for i in _GRAPH_SHARED:
            value = values[i]
            values[i] = seen.setdefault(value, value)
        for i, key in _GRAPH_NESTED_AT:
            value = values[i]
            if value is _ABSENT or value is None:
                continue
            converted = _CONVERT[key](value, seen)
            if converted is None:  # a shape we do not know: keep the dict
                return contact
            values[i] = converted
        return GraphRecord(tuple(values))


def _emails(value: Any, seen: dict[Any, Any]) -> Any:
    if type(value) is not list:
        return None
    entries = []
    for entry in value:
        if type(entry) is not dict or not entry.keys() <= _EMAIL_KEYS:
            return None
        entries.append(EmailRecord((entry.get("name", _ABSENT), entry.get("address", _ABSENT))))
    return tuple(entries)


def _strings(value: Any, seen: dict[Any, Any]) -> Any:
    if type(value) is not list:
        return None
    return tuple([seen.setdefault(v, v) if type(v) is str else v for v in value])


def _address(value: Any, seen: dict[Any, Any]) -> Any:
    if type(value) is not dict or not value.keys() <= _ADDRESS_KEYS:
        return None
    values = [value.get(k, _ABSENT) for k in AddressRecord.KEYS]
    return AddressRecord(tuple([seen.setdefault(v, v) for v in values]))


def _properties(value: Any, seen: dict[Any, Any]) -> Any:
    if type(value) is not list:
        return None
    entries = []
    for entry in value:
        if type(entry) is not dict or not entry.keys() <= _PROPERTY_KEYS:
            return None
        name = entry.get("id", _ABSENT)  # every contact carries the same name: share it
        entries.append(PropertyRecord((seen.setdefault(name, name), entry.get("value", _ABSENT))))
    return tuple(entries)


def _primary(value: Any, seen: dict[Any, Any]) -> Any:
    if type(value) is not dict or not value.keys() <= _EMAIL_KEYS:
        return None
    return EmailRecord((value.get("name", _ABSENT), value.get("address", _ABSENT)))


_CONVERT: Final = {
    "emailAddresses": _emails, "businessPhones": _strings, "businessAddress": _address,
    "categories": _strings, "singleValueExtendedProperties": _properties,
    "primaryEmailAddress": _primary,
}  # fmt: skip
_GRAPH_NESTED_AT: Final = tuple(
    (GraphRecord._INDEX[k], k) for k in GraphRecord.KEYS if k in _NESTED
)


class ContentNotRead(LookupError):
    """A stub was asked for what it does not keep: the planner reads the contact (NeedsRead)
    and plans again. Rules never see the difference: they read a contact, and this ends the
    attempt before anything is decided from a missing value."""

    def __init__(self, graph_id: str, key: str) -> None:
        super().__init__(f"{key} of {graph_id} was not read")
        self.graph_id = graph_id


class GraphStub(Record):
    """An Outlook contact known by its id, versions, first email, BC-id tag and creation time
    only: what pairing and echo checks read. A full sync keeps one instead of the whole contact
    when the contact and its BC contact both still carry the versions of their link (nothing
    to write). Asked for anything else, it raises ContentNotRead (the planner then reads it)."""

    __slots__ = ()
    KEYS = (
        "@odata.etag", "id", "changeKey", "createdDateTime", "emailAddresses",
        "singleValueExtendedProperties",
    )  # fmt: skip

    def get(self, key: str, default: Any = None) -> Any:  # Record.get, inlined: hot too
        index = self._INDEX.get(key)
        if index is None:
            raise ContentNotRead(self._values[1], key)
        value = self._values[index]
        if value is _ABSENT:
            return default
        if value is _WEAK_ETAG:  # not stored: the weak ETag of the changeKey, made on read
            return f'W/"{self._values[2]}"'
        return value


_WEAK_ETAG: Final = object()  # a stub's ETag that is `W/"<its changeKey>"` (most are)


def graph_stub(
    contact: Mapping[str, Any], graph_id: str, change_key: str, bc_id: str,
    *, bc_email: str | None = None, shared: dict[Any, Any] | None = None,
) -> GraphStub | None:
    """The stub of a wire contact whose id, changeKey and BC-id tag (if any) are `graph_id`,
    `change_key` and `bc_id` (a link's: those strings are shared, not copied); None if they
    differ or it has no email. An address equal to `bc_email` (its BC contact's) shares that
    string; `shared` shares creation times (a bulk load creates thousands in one second)."""
    emails = contact.get("emailAddresses")
    if type(emails) is not list or not emails or type(emails[0]) is not dict:
        return None
    address = emails[0].get("address", _ABSENT)
    if address == bc_email:
        address = bc_email
    created = contact.get("createdDateTime", _ABSENT)
    if shared is not None:
        if len(shared) > _Shared.LIMIT:
            shared.clear()
        created = shared.setdefault(created, created)
    tag = bc_id_of(contact)
    if tag not in ("", canon_bc_id(bc_id)) or contact.get("id") != graph_id:
        return None
    if graph_change_key(contact) != change_key:
        return None
    key = contact.get("changeKey", _ABSENT)
    if key == change_key:
        key = change_key
    etag = contact.get("@odata.etag", _ABSENT)
    if type(key) is str and etag == f'W/"{key}"':
        etag = _WEAK_ETAG  # ~80 bytes a stub not kept: read back from the changeKey
    return GraphStub((
        etag, graph_id, key,
        created,
        (EmailRecord((_ABSENT, address)),),
        (PropertyRecord((BC_ID_PROPERTY, bc_id)),) if tag else (),
    ))  # fmt: skip
