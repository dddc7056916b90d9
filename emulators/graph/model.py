"""Graph's resource shapes: the contact and folder properties, ids, change keys, errors.

A contact is stored as the dict Graph would send (`Contact.data`, every v1.0 property present,
null or [] when unset, reference 1.1) plus its single-value extended properties, which Graph
only returns when `$expand`ed. The JSON encoding of the full item is cached, so listing 100,000
contacts joins pre-encoded bytes instead of re-encoding dicts.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STRING_PROPS = (
    "fileAs",
    "displayName",
    "givenName",
    "initials",
    "middleName",
    "nickName",
    "surname",
    "title",
    "yomiGivenName",
    "yomiSurname",
    "yomiCompanyName",
    "generation",
    "jobTitle",
    "companyName",
    "department",
    "officeLocation",
    "profession",
    "businessHomePage",
    "assistantName",
    "manager",
    "mobilePhone",
    "spouseName",
    "personalNotes",
)
STRING_LIST_PROPS = ("categories", "imAddresses", "homePhones", "businessPhones", "children")
ADDRESS_PROPS = ("homeAddress", "businessAddress", "otherAddress")
ADDRESS_KEYS = ("street", "city", "state", "countryOrRegion", "postalCode")
READ_ONLY_PROPS = (
    "id",
    "changeKey",
    "createdDateTime",
    "lastModifiedDateTime",
    "parentFolderId",
)
# Newer CSDL properties the docs page does not list: accepted and ignored (reference 1.1).
IGNORED_PROPS = ("primaryEmailAddress", "secondaryEmailAddress", "tertiaryEmailAddress")
NAME_PROPS = ("givenName", "middleName", "surname")

# Output order follows Graph's responses.
OUTPUT_ORDER = (
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "parentFolderId",
    "birthday",
    "fileAs",
    "displayName",
    "givenName",
    "initials",
    "middleName",
    "nickName",
    "surname",
    "title",
    "yomiGivenName",
    "yomiSurname",
    "yomiCompanyName",
    "generation",
    "imAddresses",
    "jobTitle",
    "companyName",
    "department",
    "officeLocation",
    "profession",
    "businessHomePage",
    "assistantName",
    "manager",
    "homePhones",
    "mobilePhone",
    "businessPhones",
    "spouseName",
    "personalNotes",
    "children",
    "emailAddresses",
    "homeAddress",
    "businessAddress",
    "otherAddress",
)
CONTACT_TYPE = "#microsoft.graph.contact"


class GraphError(Exception):
    """Raised by handlers; rendered as Graph's error body (reference 1.9)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def invalid(message: str, code: str = "ErrorInvalidRequest") -> GraphError:
    return GraphError(400, code, message)


def not_found(message: str = "The specified object was not found in the store.") -> GraphError:
    return GraphError(404, "ErrorItemNotFound", message)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=")


REST_ID_PREFIX = "AAMkAGI2"
IMMUTABLE_ID_PREFIX = "AAkALgAA"


def new_item_id() -> str:
    # Outlook REST ids are long, case-sensitive, url-safe base64 ending in "=".
    return REST_ID_PREFIX + _b64(48) + "AAA="


# Two id forms for one item ("Obtain immutable identifiers for Outlook resources",
# learn.microsoft.com/graph/outlook-immutable-id): a request with `Prefer: IdType="ImmutableId"`
# sees the immutable id, one without it the default (REST) id; the strings differ. Items are
# stored under their REST id; the immutable one is derived from it (and back), so either form
# names the item in a request, as Graph accepts both.
def immutable_id(rest_id: str) -> str:
    return IMMUTABLE_ID_PREFIX + rest_id.removeprefix(REST_ID_PREFIX)


def rest_id(any_id: str) -> str:
    """The stored (REST) id of an item named by either form."""
    if any_id.startswith(IMMUTABLE_ID_PREFIX):
        return REST_ID_PREFIX + any_id.removeprefix(IMMUTABLE_ID_PREFIX)
    return any_id


def id_in_form(stored_id: str, immutable: bool) -> str:
    return immutable_id(stored_id) if immutable else stored_id


def new_folder_id() -> str:
    return "AAMkAGI2" + _b64(30) + "AAAA="


def new_change_key() -> str:
    return "EQAAABYAAA" + _b64(21)


def new_guid() -> str:
    return str(uuid.uuid4())


_PROP_ID = re.compile(r"^\s*(\w+)\s+\{([0-9a-fA-F-]{36})\}\s+(Name|Id)\s+(.+?)\s*$", re.I)


def canon_prop_id(prop_id: str) -> str:
    """Type, GUID and the Name/Id keyword are case-insensitive; the name itself is not
    (reference 1.5)."""
    m = _PROP_ID.match(prop_id)
    if not m:
        raise invalid(f"Invalid extended property id '{prop_id}'.")
    kind, guid, form, name = m.groups()
    if form.lower() == "id":
        name = name.lower()
    return f"{kind.lower()} {{{guid.lower()}}} {form.lower()} {name}"


def _is_str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _norm_datetime(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise invalid(
            f"Cannot convert the literal '{v}' to the expected type 'Edm.DateTimeOffset'."
        )
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError as exc:
        raise invalid(f"Invalid value for {name}: '{v}'.") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _norm_address(name: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid(f"Property '{name}' must be a physicalAddress.")
    out: dict[str, Any] = {}
    for k, val in v.items():
        if k.startswith("@odata."):
            continue
        if k not in ADDRESS_KEYS:
            raise invalid(
                f"The property '{k}' does not exist on type 'microsoft.graph.physicalAddress'.",
                "RequestBodyRead",
            )
        if not _is_str_or_none(val):
            raise invalid(f"Property '{name}/{k}' must be a string.")
        if val is not None:
            out[k] = val
    return out


def _norm_emails(v: Any, limit: int) -> list[dict[str, Any]]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise invalid("Property 'emailAddresses' must be a collection.")
    out = []
    for item in v:
        if not isinstance(item, dict):
            raise invalid("emailAddresses items must be emailAddress objects.")
        for k in item:
            if k not in ("name", "address") and not k.startswith("@odata."):
                raise invalid(
                    f"The property '{k}' does not exist on type 'microsoft.graph.emailAddress'.",
                    "RequestBodyRead",
                )
        name, address = item.get("name"), item.get("address")
        if not _is_str_or_none(name) or not _is_str_or_none(address):
            raise invalid("emailAddress name and address must be strings.")
        out.append({"name": name, "address": address})
    if limit and len(out) > limit:
        raise invalid(f"A contact can have at most {limit} email addresses.")
    return out


def parse_ext_props(v: Any) -> dict[str, tuple[str, str]]:
    if v is None:
        return {}
    if not isinstance(v, list):
        raise invalid("singleValueExtendedProperties must be a collection.")
    out: dict[str, tuple[str, str]] = {}
    for item in v:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise invalid("singleValueExtendedProperties items need an 'id'.")
        value = item.get("value")
        if not isinstance(value, str):
            raise invalid("singleValueExtendedProperties 'value' must be a string.")
        out[canon_prop_id(item["id"])] = (item["id"], value)
    return out


def normalize_contact_body(
    body: Any, *, strict: bool, max_emails: int
) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """Validate a POST/PATCH body: (changed contact fields, extended properties to set)."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", "BadRequest")
    fields: dict[str, Any] = {}
    ext: dict[str, tuple[str, str]] = {}
    for key, v in body.items():
        if key.startswith("@odata.") or key in READ_ONLY_PROPS or key in IGNORED_PROPS:
            continue
        if key in STRING_PROPS:
            if not _is_str_or_none(v):
                raise invalid(f"Property '{key}' must be a string.")
            fields[key] = v
        elif key in STRING_LIST_PROPS:
            if v is not None and not (isinstance(v, list) and all(isinstance(s, str) for s in v)):
                raise invalid(f"Property '{key}' must be a collection of strings.")
            fields[key] = list(v or [])
        elif key in ADDRESS_PROPS:
            fields[key] = _norm_address(key, v)
        elif key == "emailAddresses":
            fields[key] = _norm_emails(v, max_emails)
        elif key == "birthday":
            fields[key] = _norm_datetime(key, v)
        elif key == "singleValueExtendedProperties":
            ext = parse_ext_props(v)
        elif key in ("multiValueExtendedProperties", "extensions", "photo"):
            raise invalid(f"The emulator does not model '{key}'.", "ErrorInvalidRequest")
        elif strict:
            raise invalid(
                f"The property '{key}' does not exist on type 'microsoft.graph.contact'. Make "
                "sure to only use property names that are defined by the type or mark the type "
                "as open type.",
                "RequestBodyRead",
            )
    return fields, ext


def empty_contact() -> dict[str, Any]:
    d: dict[str, Any] = {}
    for key in OUTPUT_ORDER:
        if key in STRING_LIST_PROPS or key == "emailAddresses":
            d[key] = []
        elif key in ADDRESS_PROPS:
            d[key] = {}
        else:
            d[key] = None
    return d


def compose_display_name(d: dict[str, Any]) -> str:
    return " ".join(p for p in (d.get("givenName"), d.get("middleName"), d.get("surname")) if p)


@dataclass(slots=True)
class Contact:
    id: str
    user_id: str
    folder_id: str
    data: dict[str, Any]  # Graph's JSON shape, without @odata.etag
    ext: dict[str, tuple[str, str]] = field(default_factory=dict)  # canon id -> (id, value)
    seq: int = 0  # global change sequence of the last write (delta)
    _raw: bytes | None = None  # cached JSON of the full item, REST id
    _raw_immutable: bytes | None = None  # the same with the immutable id

    def public_id(self, immutable: bool) -> str:
        return id_in_form(self.id, immutable)

    @property
    def change_key(self) -> str:
        return str(self.data["changeKey"])

    @property
    def etag(self) -> str:
        return f'W/"{self.data["changeKey"]}"'

    def emails(self) -> set[str]:
        return {
            str(e["address"]).strip().lower()
            for e in self.data.get("emailAddresses") or ()
            if e.get("address")
        }

    def raw(self, immutable: bool = False) -> bytes:
        """The full item with `@odata.etag`, encoded once per version and id form."""
        if immutable:
            if self._raw_immutable is None:
                self._raw_immutable = dumps(
                    {"@odata.etag": self.etag, **self.data, "id": immutable_id(self.id)}
                )
            return self._raw_immutable
        if self._raw is None:
            self._raw = dumps({"@odata.etag": self.etag, **self.data})
        return self._raw

    def invalidate(self) -> None:
        self._raw = self._raw_immutable = None

    def view(
        self, select: list[str] | None, expand_ext: str | None, immutable: bool = False
    ) -> dict[str, Any]:
        """The item as a dict, narrowed by $select and with the expanded extended property."""
        out: dict[str, Any] = {"@odata.etag": self.etag}
        if select:
            out["id"] = self.id
            for key in select:
                if key in self.data:
                    out[key] = self.data[key]
        else:
            out.update(self.data)
        out["id"] = self.public_id(immutable)
        if expand_ext is not None:
            hit = self.ext.get(expand_ext)
            out["singleValueExtendedProperties"] = [{"id": hit[0], "value": hit[1]}] if hit else []
        return out


@dataclass(slots=True)
class Folder:
    id: str
    user_id: str
    display_name: str
    parent_folder_id: str
    contacts: dict[str, None] = field(default_factory=dict)  # ordered set of contact ids
    # id -> seq of its last change (tombstones included), kept in seq order so that "changes
    # since S" walks back from the end and stops: O(changes), not O(history).
    changes: dict[str, int] = field(default_factory=dict)
    by_email: dict[str, set[str]] = field(default_factory=dict)
    by_ext: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    _order: list[str] | None = None  # cached list(contacts) for O(page) $skip

    def order(self) -> list[str]:
        if self._order is None:
            self._order = list(self.contacts)
        return self._order

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "displayName": self.display_name,
            "parentFolderId": self.parent_folder_id,
        }


@dataclass(slots=True)
class User:
    id: str
    user_principal_name: str
    display_name: str
    root_folder_id: str  # the default "Contacts" folder

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "userPrincipalName": self.user_principal_name,
            "displayName": self.display_name,
            "mail": self.user_principal_name,
        }
