"""Field mapping: BC API v2.0 contact dict <-> canonical contact <-> Graph contact dict.

Plain functions on wire-shaped dicts (camelCase, `@odata.etag` kept), no pydantic on the hot
path: a run maps 100,000 contacts. The fields are declared once, in engine/fields.py; the
one-to-one ones are mapped from that table, the composite ones below. The pydantic models in
`schemas.contacts` document the shapes (`to_model` converts; a test keeps them equal).

Mapping (BC's Contact Sync with Office 365 field mapping):

    BC API v2.0             canonical        Graph v1.0
    displayName (100)       display_name     displayName
    (NameBreakdown)         given_name ...   givenName / middleName / surname
    email (80)              email            emailAddresses[0].address (others kept)
    phoneNumber (30)        business_phone   businessPhones[0]
    mobilePhoneNumber (30)  mobile_phone     mobilePhone
    addressLine1/2 (100/50) street           businessAddress.street, lines joined by LF
    city/state (30)         city/state       businessAddress.city/state
    postalCode (Code 20)    postal_code      businessAddress.postalCode
    country (Code 10)       country          businessAddress.countryOrRegion
    jobTitle (30)           job_title        jobTitle
    companyName (100)       company_name     companyName
    website (255)           website          businessHomePage

Decisions where the references are silent:
- Name parts: BC's API has displayName only; BC derives First/Middle/Surname with NameBreakdown
  (`split_display_name`, same rule). BC -> Outlook sends the parts computed that way. Outlook's
  parts never reach BC, so they are left out of the content hash (they follow displayName).
- Categories: BC -> Outlook adds "Business Central" (v28 behaviour) and keeps the user's other
  categories; categories are not part of the synced content.
- Outlook's other email addresses are kept on update; other business phones are kept only while
  BC has a phone (a blank BC phone clears the list, so the first phone always mirrors BC).
- Website size: Home Page is Text[255] in current BC (Text[80] before CLEAN24).
- Code fields (postalCode, country) are upper-cased on the way into BC, as BC stores them.
- Into BC, a value BC would reject (too long, letters in a phone number, an invalid email, a
  blank name or email) is skipped and reported as a `FieldIssue`; the rest of the contact syncs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from contactsync.engine.fields import ADDRESS, FIELDS, bc_select, graph_select
from contactsync.engine.links import canon_bc_id
from contactsync.schemas.contacts import CanonicalContact

BC_ID_PROPERTY: Final = "String {f4c1a0e2-5b7d-4c8e-9a3f-2d6b8e1c7a90} Name BcContactId"
SYNC_CATEGORY: Final = "Business Central"


# A contact in canonical shape: {field name: value} for every field of the table
# (engine/fields.py); "" means no value.
Canonical = dict[str, str]

CANONICAL_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in FIELDS)
NAME_PART_FIELDS: Final = ("given_name", "middle_name", "surname")
# The content that round-trips through BC: what the hash covers and what a conflict compares.
HASHED_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in FIELDS if f.hashed)
# What the mapping and the planner read of each side: listings ask for these fields only
# ($select), which keeps 100,000-contact listings small in bytes and in memory.
BC_SELECT: Final[tuple[str, ...]] = bc_select(FIELDS)
GRAPH_SELECT: Final[tuple[str, ...]] = graph_select(FIELDS)
# BC Contact table 5050 sizes of the API properties we write.
BC_FIELD_SIZES: Final[Mapping[str, int]] = {
    prop: size for f in FIELDS for prop, size in zip(f.bc, f.bc_size, strict=True)
}
BC_CODE_FIELDS: Final = frozenset(p for f in FIELDS if f.code for p in f.bc)
_BC_PHONE_FIELDS: Final = frozenset(p for f in FIELDS if f.phone for p in f.bc)
_BC_NAME_PART_SIZE: Final = 30
# Fields mapped one to one: (canonical, BC property, Graph property or address part, in address)
_ADDRESS_PREFIX: Final = ADDRESS + "."
_SIMPLE: Final = tuple(
    (f.name, f.bc[0], f.graph.removeprefix(_ADDRESS_PREFIX), f.graph.startswith(_ADDRESS_PREFIX))
    for f in FIELDS if not f.composite
)


@dataclass(frozen=True, slots=True)
class FieldIssue:
    """A field BC would reject: skipped on the way into BC and reported (BC's Activity Log)."""

    field: str  # BC API property name
    reason: str
    value: str = ""


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def normalize_email(email: str | None) -> str:
    """The match key: trimmed, case-insensitive (BC compares `Search E-Mail`, upper case)."""
    text = (email or "").strip()
    lowered = text.lower()
    return text if lowered == text else lowered  # the same string when already normal: less memory


def split_display_name(name: str) -> tuple[str, str, str]:
    """BC's Contact.NameBreakdown: (first name, middle name, surname) from Name.

    Parts are separated by spaces (runs of spaces count as one). The last part is the surname,
    the one before it the middle name when there are three or more parts, and the rest, joined
    by single spaces, the first name. A single part is the first name. Each is cut to 30
    characters (Text[30]). Example: "Anna Maria de Vries" -> ("Anna Maria", "de", "Vries").
    """
    parts = name.split(" ")
    # BC skips empty parts between spaces but keeps what follows the last space, even if empty.
    *head, last = parts
    words = [p for p in head if p] + [last]
    count = len(words)
    first_words: list[str] = []
    middle = surname = ""
    for index, word in enumerate(words, start=1):
        if index == count and count > 1:
            surname = word[:_BC_NAME_PART_SIZE]
        elif index == count - 1 and count > 2:
            middle = word[:_BC_NAME_PART_SIZE]
        else:
            first_words.append(word)
    first = " ".join(first_words).lstrip(" ")[:_BC_NAME_PART_SIZE]
    return first, middle, surname


def join_street(line1: str, line2: str) -> str:
    return f"{line1}\n{line2}" if line2 else line1


def split_street(street: str) -> tuple[str, str]:
    """Street -> (Address, Address 2): split on the first line feed (CRLF or LF, as BC does).

    Further line breaks in the second part become ", " since Address 2 is a single line.
    """
    text = street.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    line1, _, rest = text.partition("\n")
    line2 = ", ".join(part for part in rest.split("\n") if part)
    return line1, line2


def canonical_from_bc(bc: Mapping[str, Any]) -> Canonical:
    name = as_text(bc.get("displayName"))
    given, middle, surname = split_display_name(name)
    contact = {
        "display_name": name,
        "given_name": given,
        "middle_name": middle,
        "surname": surname,
        "email": as_text(bc.get("email")),
        "business_phone": as_text(bc.get("phoneNumber")),
        "street": join_street(as_text(bc.get("addressLine1")), as_text(bc.get("addressLine2"))),
    }
    for field, bc_name, _graph, _in_address in _SIMPLE:
        contact[field] = as_text(bc.get(bc_name))
    return contact


def graph_email(graph: Mapping[str, Any]) -> str:
    """The first email address; falls back to `primaryEmailAddress` (as BC's Graph-based contact
    sync does)."""
    addresses = graph.get("emailAddresses") or ()
    for entry in addresses[:1]:
        if isinstance(entry, Mapping):
            return as_text(entry.get("address"))
    primary = graph.get("primaryEmailAddress")
    return as_text(primary.get("address")) if isinstance(primary, Mapping) else ""


def bc_id_of(graph: Mapping[str, Any], property_id: str = BC_ID_PROPERTY) -> str:
    """The BC contact id we tagged this Outlook contact with (canonical), or ""."""
    wanted = property_id.lower()  # Graph may spell the GUID in either case
    for prop in graph.get("singleValueExtendedProperties") or ():
        if isinstance(prop, Mapping) and as_text(prop.get("id")).lower() == wanted:
            return canon_bc_id(as_text(prop.get("value")))
    return ""


def graph_change_key(graph: Mapping[str, Any]) -> str:
    """changeKey, else the one inside the weak ETag `W/"<changeKey>"`."""
    key = as_text(graph.get("changeKey"))
    if key:
        return key
    etag = as_text(graph.get("@odata.etag"))
    return etag[3:-1] if etag.startswith('W/"') and etag.endswith('"') else etag


def canonical_from_graph(graph: Mapping[str, Any]) -> Canonical:
    address = graph.get("businessAddress") or {}
    phones = graph.get("businessPhones") or ()
    street = as_text(address.get("street")).replace("\r\n", "\n").replace("\r", "\n")
    given, middle, surname = (
        as_text(graph.get("givenName")),
        as_text(graph.get("middleName")),
        as_text(graph.get("surname")),
    )
    # No display name: compose one from the parts, as BC's CalculatedName does.
    display = as_text(graph.get("displayName")) or " ".join(
        p for p in (given, middle, surname) if p
    )
    contact = {
        "display_name": display,
        "given_name": given,
        "middle_name": middle,
        "surname": surname,
        "email": graph_email(graph),
        "business_phone": as_text(phones[0]) if phones else "",
        # BC's legacy push ended the street with a line break; a trailing one carries nothing.
        "street": street.rstrip("\n"),
    }
    for field, _bc, graph_name, in_address in _SIMPLE:
        contact[field] = as_text((address if in_address else graph).get(graph_name))
    return contact


def _or_none(value: str) -> str | None:
    return value or None  # a blank overwrites: Graph clears a property set to null


def graph_fields_from_canonical(
    contact: Canonical,
    bc_id: str,
    existing: Mapping[str, Any] | None = None,
    *,
    property_id: str = BC_ID_PROPERTY,
) -> dict[str, Any]:
    """A Graph body that sets every mapped field (a push overwrites, blanks included).

    With `existing` (an update), Outlook's other email addresses, other business phones and
    other categories are kept. Name parts come from BC's NameBreakdown of the display name.
    """
    given, middle, surname = split_display_name(contact["display_name"])
    email = contact["email"]
    addresses: list[dict[str, Any]] = []
    if email:
        addresses.append({"address": email, "name": contact["display_name"] or email})
    phones = [contact["business_phone"]] if contact["business_phone"] else []
    categories = [SYNC_CATEGORY]
    if existing is not None:
        key = normalize_email(email)
        for entry in (existing.get("emailAddresses") or ())[1:]:
            if isinstance(entry, Mapping) and normalize_email(entry.get("address")) != key:
                addresses.append(dict(entry))
        if phones:
            phones.extend(as_text(p) for p in (existing.get("businessPhones") or ())[1:])
        categories = [as_text(c) for c in existing.get("categories") or ()]
        if SYNC_CATEGORY not in categories:
            categories.append(SYNC_CATEGORY)
    address: dict[str, Any] = {"street": _or_none(contact["street"])}
    body: dict[str, Any] = {
        "displayName": _or_none(contact["display_name"]),
        "givenName": _or_none(given),
        "middleName": _or_none(middle),
        "surname": _or_none(surname),
        "emailAddresses": addresses,
        "businessPhones": phones,
        ADDRESS: address,
        "categories": categories,
        "singleValueExtendedProperties": [{"id": property_id, "value": bc_id}],
    }
    for field, _bc, graph_name, in_address in _SIMPLE:
        (address if in_address else body)[graph_name] = _or_none(contact[field])
    return body


class GraphBodyFromBc(Mapping[str, Any]):
    """`graph_fields_from_canonical(canonical_from_bc(bc), bc_id)`, built when it is read.

    A full sync into an empty folder plans 100,000 creates; built ahead, their bodies would
    all be in memory at once, while the executor sends 500 at a time. The last body built is
    kept, so reading one body key by key (`dict(body)`) builds it once."""

    __slots__ = ("_bc", "_bc_id")
    _last: tuple[GraphBodyFromBc, dict[str, Any]] | None = None  # one tuple: read atomically

    def __init__(self, bc: Mapping[str, Any], bc_id: str) -> None:
        self._bc, self._bc_id = bc, bc_id

    @property
    def source(self) -> Mapping[str, Any]:
        """The BC contact it is built from (what the link of the create keeps: engine/synced.py)."""
        return self._bc

    def _body(self) -> dict[str, Any]:
        last = GraphBodyFromBc._last
        if last is not None and last[0] is self:
            return last[1]
        body = graph_fields_from_canonical(canonical_from_bc(self._bc), self._bc_id)
        GraphBodyFromBc._last = (self, body)
        return body

    def __getitem__(self, key: str) -> Any:
        return self._body()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body())

    def __len__(self) -> int:
        return len(self._body())

    def __repr__(self) -> str:
        return repr(self._body())


def is_valid_email(email: str) -> bool:
    """A plausibility check standing in for BC's MailManagement validation (UNCONFIRMED rule)."""
    local, at, domain = email.partition("@")
    return (
        bool(at and local and domain)
        and "@" not in domain
        and not any(ch.isspace() for ch in email)
        and "." in domain.strip(".")
    )


def bc_field_problem(field: str, value: str) -> str | None:
    """Why BC would reject `value` for API property `field`, or None if it takes it."""
    size = BC_FIELD_SIZES.get(field)
    if size is not None and len(value) > size:
        return f"longer than {size} characters"
    if field in _BC_PHONE_FIELDS and any(ch.isalpha() for ch in value):
        return "must not contain letters"
    if field == "email" and value and not is_valid_email(value):
        return "not a valid email address"
    if field in ("displayName", "email") and not value.strip():
        return "must not be blank"
    return None


def _bc_values(contact: Canonical) -> dict[str, str]:
    values = {"displayName": contact["display_name"], "email": contact["email"],
              "phoneNumber": contact["business_phone"]}
    values["addressLine1"], values["addressLine2"] = split_street(contact["street"])
    for field, bc_name, _graph, _in_address in _SIMPLE:
        values[bc_name] = contact[field]
    for name in BC_CODE_FIELDS:
        values[name] = values[name].upper()
    return values


def bc_fields_from_canonical(
    contact: Canonical, current: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[FieldIssue]]:
    """BC API fields for a POST (`current` None: a new Person) or a PATCH (only what differs).

    A value BC would reject is left out and reported; the contact still syncs.
    """
    fields: dict[str, Any] = {}
    issues: list[FieldIssue] = []
    for field, value in _bc_values(contact).items():
        if current is not None and as_text(current.get(field)) == value:
            continue
        if current is None and not value and field not in ("displayName", "email"):
            continue  # a new contact's blank fields are blank already
        problem = bc_field_problem(field, value)
        if problem is not None:
            issues.append(FieldIssue(field, problem, value))
            continue
        fields[field] = value
    if current is None:
        fields["type"] = "Person"
    return fields, issues


_EMAIL_INDEX: Final = HASHED_FIELDS.index("email")


def _normalized(contact: Canonical) -> list[str]:
    """Hashed fields with whitespace collapsed and the email case-folded."""
    data = cast(Mapping[str, str], contact)
    values = [" ".join(data[f].split()) for f in HASHED_FIELDS]
    values[_EMAIL_INDEX] = values[_EMAIL_INDEX].lower()
    return values


def content_hash(contact: Canonical) -> str:
    """Stable hash of the synced content (whitespace collapsed, email case-folded)."""
    return hashlib.sha256("\x1f".join(_normalized(contact)).encode()).hexdigest()[:32]


def differing_fields(left: Canonical, right: Canonical) -> list[str]:
    """Hashed fields whose normalized values differ."""
    pairs = zip(HASHED_FIELDS, _normalized(left), _normalized(right), strict=True)
    return [f for f, a, b in pairs if a != b]


def values_of(contact: Canonical, fields: Iterable[str]) -> dict[str, str]:
    """{field: value} for the given canonical fields."""
    as_mapping = cast(Mapping[str, str], contact)
    return {f: as_mapping[f] for f in fields}


def to_model(contact: Canonical) -> CanonicalContact:
    return CanonicalContact(**contact)


def from_model(model: CanonicalContact) -> Canonical:
    data = model.model_dump()
    return {f: data[f] for f in CANONICAL_FIELDS}
