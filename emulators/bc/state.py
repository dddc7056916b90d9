"""The emulator's data: companies, their contacts (API v2.0 page 30071 shape), tombstones.

Built for 100,000 contacts: each company keeps a dict by id, plus two append-only ordered
indexes (insertion sequence, and lastModifiedDateTime) with lazy deletion, so
`lastModifiedDateTime gt W` and skiptoken paging are a bisect, not a scan. Every write stamps a
millisecond `lastModifiedDateTime` that is strictly increasing across the emulator, which is what
keeps the modified-time index sorted on plain appends. Each contact's JSON is cached until it
changes, so a 20,000-row page is a string join.

All access goes through one re-entrant lock: tests call the Python helpers from their own thread
while the server's event loop serves HTTP.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contactsync.emulators.bc.errors import ODataError, bad_request

# Wire order of page 30071's properties (reference c.2). No first/middle/surname: the API
# does not expose them. jobTitle is UNCONFIRMED on the page (BCApps d8f6462 lacks it) but is in
# the API docs' table; we expose it, since the sync maps it and a missing field would hide bugs.
CONTACT_FIELDS: tuple[str, ...] = (
    "id", "number", "type", "displayName", "jobTitle", "companyNumber", "companyName",
    "contactBusinessRelation", "addressLine1", "addressLine2", "city", "state", "country",
    "postalCode", "phoneNumber", "mobilePhoneNumber", "email", "website", "searchName",
    "privacyBlocked", "taxRegistrationNumber", "lastInteractionDate", "lastModifiedDateTime",
)



def contact_fields(job_title: bool = True) -> tuple[str, ...]:
    """The contact properties of an environment: without `jobTitle` before BC 2024 (v24)."""
    return CONTACT_FIELDS if job_title else tuple(f for f in CONTACT_FIELDS if f != "jobTitle")


# Contact table 5050 field sizes (reference b).
MAX_LENGTH: dict[str, int] = {
    "number": 20, "displayName": 100, "jobTitle": 30, "companyNumber": 20, "companyName": 100,
    "addressLine1": 100, "addressLine2": 50, "city": 30, "state": 30, "country": 10,
    "postalCode": 20, "phoneNumber": 30, "mobilePhoneNumber": 30, "email": 80, "website": 80,
    "searchName": 100, "taxRegistrationNumber": 20,
}
STRING_FIELDS = frozenset(MAX_LENGTH) | {"type", "contactBusinessRelation"}
READ_ONLY = frozenset({"lastModifiedDateTime", "contactBusinessRelation", "lastInteractionDate"})
CONTACT_TYPES = ("Person", "Company")
FIELD_CAPTIONS = {"phoneNumber": "Phone No.", "mobilePhoneNumber": "Mobile Phone No."}
_LETTER = re.compile(r"[^\W\d_]")  # any Unicode letter
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
EMPTY_DATE = "0001-01-01"


def format_ms(ms: int) -> str:
    """Milliseconds since the epoch -> BC's `2019-08-18T20:05:51.603Z`."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_datetime_us(text: str) -> int:
    """ISO 8601 (Z or offset; naive = UTC) -> microseconds since the epoch."""
    t = text.strip()
    if t.endswith("Z") or t.endswith("z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def make_etag(contact_id: str, rowversion: int) -> str:
    """BC-looking weak ETag: base64 of `'44;<key>;<rowversion>;'` gives the familiar
    `W/"JzQ0O..."`. Opaque to clients; changes on every write."""
    key = base64.b64encode(uuid.UUID(contact_id).bytes).decode()
    raw = f"'44;{key}1;{rowversion};'"
    return 'W/"' + base64.b64encode(raw.encode()).decode() + '"'


class _OrderedIndex:
    """Append-only (key, id) pairs with ascending keys; stale pairs are skipped and compacted."""

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.ids: list[str] = []
        self.stale = 0

    def append(self, key: int, contact_id: str) -> None:
        if self.keys and key <= self.keys[-1]:
            raise ValueError("ordered index keys must increase")
        self.keys.append(key)
        self.ids.append(contact_id)

    def after(self, key: int) -> Iterator[tuple[int, str]]:
        """Pairs with a key strictly greater than `key`, ascending."""
        start = bisect_right(self.keys, key)
        keys, ids = self.keys, self.ids
        for i in range(start, len(keys)):
            yield keys[i], ids[i]

    def mark_stale(self, is_live: Callable[[int, str], bool]) -> None:
        self.stale += 1
        if self.stale > 1024 and self.stale * 2 > len(self.keys):
            pairs = [(k, i) for k, i in zip(self.keys, self.ids, strict=True) if is_live(k, i)]
            self.keys = [k for k, _ in pairs]
            self.ids = [i for _, i in pairs]
            self.stale = 0

    def rebuild(self, pairs: list[tuple[int, str]]) -> None:
        pairs.sort()
        self.keys = [k for k, _ in pairs]
        self.ids = [i for _, i in pairs]
        self.stale = 0


@dataclass
class StoredContact:
    data: dict[str, Any]  # wire properties, CONTACT_FIELDS order, without @odata.etag
    seq: int  # insertion order; never changes
    modified_ms: int
    rowversion: int
    _json: str | None = None

    @property
    def etag(self) -> str:
        return make_etag(self.data["id"], self.rowversion)

    def entity(self) -> dict[str, Any]:
        return {"@odata.etag": self.etag, **self.data}

    def json(self) -> str:
        if self._json is None:
            self._json = json.dumps(self.entity(), separators=(",", ":"), ensure_ascii=False)
        return self._json


@dataclass
class Tombstone:
    id: str
    number: str
    deleted_ms: int


@dataclass
class Company:
    id: str
    name: str
    contacts: dict[str, StoredContact] = field(default_factory=dict)
    by_seq: _OrderedIndex = field(default_factory=_OrderedIndex)
    by_modified: _OrderedIndex = field(default_factory=_OrderedIndex)
    by_number: dict[str, str] = field(default_factory=dict)
    tombstones: dict[str, Tombstone] = field(default_factory=dict)
    next_number: int = 1
    next_seq: int = 1

    def entity(self) -> dict[str, Any]:
        return {
            "id": self.id, "systemVersion": "24.0.16410.18056", "timestamp": 0,
            "name": self.name, "displayName": self.name, "businessProfileId": "",
            "systemCreatedAt": "2024-01-01T00:00:00Z", "systemCreatedBy": _ZERO_GUID,
            "systemModifiedAt": "2024-01-01T00:00:00Z", "systemModifiedBy": _ZERO_GUID,
        }

    def _live_seq(self, key: int, contact_id: str) -> bool:
        c = self.contacts.get(contact_id)
        return c is not None and c.seq == key

    def _live_mod(self, key: int, contact_id: str) -> bool:
        c = self.contacts.get(contact_id)
        return c is not None and c.modified_ms == key

    def iter_by_seq(self, after: int) -> Iterator[StoredContact]:
        for key, cid in self.by_seq.after(after):
            c = self.contacts.get(cid)
            if c is not None and c.seq == key:
                yield c

    def iter_by_modified(self, after_ms: int) -> Iterator[StoredContact]:
        for key, cid in self.by_modified.after(after_ms):
            c = self.contacts.get(cid)
            if c is not None and c.modified_ms == key:
                yield c


_ZERO_GUID = "00000000-0000-0000-0000-000000000000"

# (company id, contact id, changeType, modified ms)
ChangeListener = Callable[[str, str, str, int], None]


def company_id_for(name: str) -> str:
    """Deterministic company ids, so tests and snapshots can name them."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"contactsync-bc-emulator/{name}"))


class BcState:
    def __init__(self, company_names: list[str],
                 fields: tuple[str, ...] = CONTACT_FIELDS) -> None:
        self.fields = fields  # the environment's contact properties, wire order
        self.lock = threading.RLock()
        self.companies: dict[str, Company] = {}
        self.last_ms = 0
        self.rowversion = 0
        self.listeners: list[ChangeListener] = []
        for name in company_names:
            self.add_company(name)

    # -- companies -------------------------------------------------------------------------

    def add_company(self, name: str) -> Company:
        with self.lock:
            company = Company(id=company_id_for(name), name=name)
            self.companies[company.id] = company
            return company

    def company(self, key: str) -> Company:
        """By id (any case, braces allowed) or by name."""
        k = key.strip().strip("{}").lower()
        with self.lock:
            if k in self.companies:
                return self.companies[k]
            for c in self.companies.values():
                if c.name == key:
                    return c
        raise ODataError(
            404, "Internal_CompanyNotFound",
            f"Cannot process the request because the company '{key}' cannot be found.",
        )

    def default_company(self) -> Company:
        with self.lock:
            return next(iter(self.companies.values()))

    # -- clock -----------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int]:
        now = int(time.time() * 1000)
        self.last_ms = max(now, self.last_ms + 1)
        self.rowversion += 1
        return self.last_ms, self.rowversion

    def _emit(self, company: Company, contact_id: str, change: str, ms: int) -> None:
        for listener in self.listeners:
            listener(company.id, contact_id, change, ms)

    # -- validation (BC's rules for the fields we model) -----------------------------------

    def _validate(
        self, company: Company, changes: dict[str, Any], current: StoredContact | None
    ) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        number = (current.data["number"] if current else changes.get("number")) or ""
        for key, value in changes.items():
            if key.startswith("@odata."):
                continue  # clients may echo an entity back; BC ignores annotations
            if key not in self.fields:
                raise bad_request(
                    f"The property '{key}' does not exist on type 'Microsoft.NAV.contact'. "
                    "Make sure to only use property names that are defined by the type.",
                )
            if key == "id":
                if current is not None and str(value).lower() != current.data["id"]:
                    raise ODataError(
                        400, "BadRequest_InvalidOperation", "Control 'id' is read-only"
                    )
                continue
            if key in READ_ONLY:
                if current is None or value != current.data[key]:
                    raise ODataError(
                        400, "BadRequest_InvalidOperation", f"Control '{key}' is read-only"
                    )
                continue
            if key == "privacyBlocked":
                if not isinstance(value, bool):
                    raise bad_request(f"Cannot convert the literal '{value}' to the expected type "
                                      "'Edm.Boolean'.")
                clean[key] = value
                continue
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise bad_request(f"Cannot convert the literal '{value}' to the expected type "
                                  "'Edm.String'.")
            limit = MAX_LENGTH.get(key)
            if limit is not None and len(value) > limit:
                raise ODataError(
                    400, "Application_StringExceededLength",
                    f"The length of the string is {len(value)}, but it must be less than or "
                    f"equal to {limit} characters. Value: {value}",
                )
            if key == "type" and value not in CONTACT_TYPES:
                raise ODataError(
                    400, "BadRequest",
                    f"Cannot convert the literal '{value}' to the expected type "
                    "'Microsoft.NAV.contactType'.",
                )
            if key in FIELD_CAPTIONS and _LETTER.search(value):
                # Contact."Phone No." OnValidate: FieldError(..., 'must not contain letters').
                raise ODataError(
                    400, "Application_FieldValidationException",
                    f"{FIELD_CAPTIONS[key]} must not contain letters in Contact No.='{number}'.",
                )
            if key == "email" and value and not _EMAIL.match(value):
                raise ODataError(
                    400, "Application_DialogException",
                    f'The email address "{value}" is not valid.',
                )
            if key == "displayName" and not value.strip():
                raise ODataError(
                    400, "Application_DialogException", 'A "displayName" must be provided.'
                )
            if key == "companyNumber" and value:
                target_id = company.by_number.get(value)
                target = company.contacts.get(target_id) if target_id else None
                if target is None or target.data["type"] != "Company":
                    raise ODataError(
                        400, "Internal_InvalidTableRelation",
                        f"The field Company No. of table Contact contains a value ({value}) "
                        "that cannot be found in the related table (Contact).",
                    )
            clean[key] = value
        return clean

    @staticmethod
    def _derive(company: Company, data: dict[str, Any], old_name: str | None) -> None:
        """Side effects of BC's OnValidate triggers that the API can observe."""
        name = data["displayName"]
        if not data["searchName"] or (old_name is not None
                                       and data["searchName"] == old_name.upper()[:100]):
            data["searchName"] = name.upper()[:100]
        if data["type"] == "Company":
            data["companyNumber"] = data["number"]
            data["companyName"] = name
        elif data["companyNumber"]:
            target = company.contacts.get(company.by_number.get(data["companyNumber"], ""))
            if target is not None:
                data["companyName"] = target.data["displayName"]

    # -- writes ----------------------------------------------------------------------------

    def create(
        self, company: Company, body: dict[str, Any], *, notify: bool = True
    ) -> StoredContact:
        with self.lock:
            clean = self._validate(company, body, None)
            if not clean.get("displayName", "").strip():
                raise ODataError(
                    400, "Application_DialogException", 'A "displayName" must be provided.'
                )
            contact_id = str(body.get("id") or uuid.uuid4()).lower()
            try:
                contact_id = str(uuid.UUID(contact_id))
            except ValueError:
                raise ODataError(
                    400, "Application_InvalidGUID",
                    "Invalid format of GUID string. The correct format of the GUID string is: "
                    "CDEF7890-ABCD-0123-1234-567890ABCDEF where 0-9, A-F symbolizes hexadecimal "
                    "digits.",
                ) from None
            if contact_id in company.contacts:
                raise ODataError(
                    409, "Internal_EntityWithSameKeyExists",
                    f"The record already exists. Identification fields and values: "
                    f"SystemId='{contact_id}'",
                )
            number = clean.get("number") or self._next_number(company)
            if number in company.by_number:
                raise ODataError(
                    409, "Internal_EntityWithSameKeyExists",
                    f"The Contact already exists. Identification fields and values: "
                    f"No.='{number}'",
                )
            ms, rv = self._stamp()
            data: dict[str, Any] = {
                "id": contact_id, "number": number, "type": "Company",
                "displayName": "", "jobTitle": "", "companyNumber": "", "companyName": "",
                "contactBusinessRelation": "None", "addressLine1": "", "addressLine2": "",
                "city": "", "state": "", "country": "", "postalCode": "", "phoneNumber": "",
                "mobilePhoneNumber": "", "email": "", "website": "", "searchName": "",
                "privacyBlocked": False, "taxRegistrationNumber": "",
                "lastInteractionDate": EMPTY_DATE, "lastModifiedDateTime": format_ms(ms),
            }
            # BC's Contact.Type defaults to Company; the API page sets nothing else.
            data.update({k: v for k, v in clean.items() if k != "number"})
            data = {k: data[k] for k in self.fields}
            self._derive(company, data, None)
            stored = StoredContact(data=data, seq=company.next_seq, modified_ms=ms, rowversion=rv)
            company.next_seq += 1
            company.contacts[contact_id] = stored
            company.by_number[number] = contact_id
            company.by_seq.append(stored.seq, contact_id)
            company.by_modified.append(ms, contact_id)
            company.tombstones.pop(contact_id, None)
            if notify:
                self._emit(company, contact_id, "created", ms)
            return stored

    def _next_number(self, company: Company) -> str:
        while True:
            number = f"CT{company.next_number:06d}"
            company.next_number += 1
            if number not in company.by_number:
                return number

    def get(self, company: Company, contact_id: str) -> StoredContact:
        with self.lock:
            stored = company.contacts.get(contact_id.strip().strip("{}").lower())
            if stored is None:
                raise ODataError(
                    404, "Internal_RecordNotFound",
                    "The Contact does not exist. Identification fields and values: "
                    f"SystemId='{contact_id}'",
                )
            return stored

    def check_etag(self, stored: StoredContact, if_match: str | None, stale_status: int) -> None:
        if if_match is None:
            return
        if if_match.strip() == "*":
            return
        if if_match.strip() != stored.etag:
            raise ODataError(
                stale_status, "Request_EntityChanged",
                "Another user has already changed the record.",
            )

    def update(
        self, company: Company, contact_id: str, changes: dict[str, Any], *,
        if_match: str | None = None, stale_status: int = 412, notify: bool = True,
    ) -> StoredContact:
        with self.lock:
            stored = self.get(company, contact_id)
            self.check_etag(stored, if_match, stale_status)
            clean = self._validate(company, changes, stored)
            data = dict(stored.data)
            old_name = data["displayName"]
            new_number = clean.pop("number", None)
            data.update(clean)
            if new_number and new_number != data["number"]:
                # A PATCH of `number` renames the record (reference c.2).
                if new_number in company.by_number:
                    raise ODataError(
                        409, "Internal_EntityWithSameKeyExists",
                        f"The Contact already exists. Identification fields and values: "
                        f"No.='{new_number}'",
                    )
                del company.by_number[data["number"]]
                company.by_number[new_number] = stored.data["id"]
                data["number"] = new_number
            self._derive(company, data, old_name)
            ms, rv = self._stamp()
            data["lastModifiedDateTime"] = format_ms(ms)
            stored.data = data
            stored.modified_ms = ms
            stored.rowversion = rv
            stored._json = None
            company.by_modified.append(ms, stored.data["id"])
            company.by_modified.mark_stale(company._live_mod)
            if notify:
                self._emit(company, stored.data["id"], "updated", ms)
            return stored

    def delete(
        self, company: Company, contact_id: str, *, if_match: str | None = None,
        stale_status: int = 412, notify: bool = True,
    ) -> Tombstone:
        with self.lock:
            stored = self.get(company, contact_id)
            self.check_etag(stored, if_match, stale_status)
            ms, _ = self._stamp()
            cid = stored.data["id"]
            del company.contacts[cid]
            company.by_number.pop(stored.data["number"], None)
            company.by_seq.mark_stale(company._live_seq)
            company.by_modified.mark_stale(company._live_mod)
            tomb = Tombstone(id=cid, number=stored.data["number"], deleted_ms=ms)
            company.tombstones[cid] = tomb
            if notify:
                self._emit(company, cid, "deleted", ms)
            return tomb

    def insert_seeded(self, company: Company, data: dict[str, Any], ms: int) -> StoredContact:
        """Bulk load for seeding: trusted data, caller-chosen (increasing) timestamp, no
        notification. The caller holds the lock."""
        self.rowversion += 1
        self.last_ms = max(self.last_ms, ms)
        data["lastModifiedDateTime"] = format_ms(ms)
        if len(data) != len(self.fields):
            data = {k: data[k] for k in self.fields}
        stored = StoredContact(
            data=data, seq=company.next_seq, modified_ms=ms, rowversion=self.rowversion
        )
        company.next_seq += 1
        cid = data["id"]
        company.contacts[cid] = stored
        company.by_number[data["number"]] = cid
        company.by_seq.append(stored.seq, cid)
        company.by_modified.append(ms, cid)
        return stored

    # -- snapshot --------------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "version": 1, "last_ms": self.last_ms, "rowversion": self.rowversion,
                "companies": [
                    {
                        "id": c.id, "name": c.name, "next_number": c.next_number,
                        "contacts": [
                            {"data": s.data, "seq": s.seq, "modified_ms": s.modified_ms,
                             "rowversion": s.rowversion}
                            for s in c.contacts.values()
                        ],
                        "tombstones": [
                            {"id": t.id, "number": t.number, "deleted_ms": t.deleted_ms}
                            for t in c.tombstones.values()
                        ],
                    }
                    for c in self.companies.values()
                ],
            }

    def load_snapshot(self, snap: dict[str, Any]) -> None:
        with self.lock:
            self.companies.clear()
            self.last_ms = int(snap["last_ms"])
            self.rowversion = int(snap["rowversion"])
            for cs in snap["companies"]:
                company = Company(id=cs["id"], name=cs["name"], next_number=cs["next_number"])
                for item in cs["contacts"]:
                    stored = StoredContact(
                        data={k: item["data"].get(k, "") for k in self.fields},
                        seq=item["seq"],
                        modified_ms=item["modified_ms"], rowversion=item["rowversion"],
                    )
                    company.contacts[stored.data["id"]] = stored
                    company.by_number[stored.data["number"]] = stored.data["id"]
                company.next_seq = max((s.seq for s in company.contacts.values()), default=0) + 1
                company.by_seq.rebuild([(s.seq, i) for i, s in company.contacts.items()])
                company.by_modified.rebuild(
                    [(s.modified_ms, i) for i, s in company.contacts.items()]
                )
                for t in cs["tombstones"]:
                    company.tombstones[t["id"]] = Tombstone(t["id"], t["number"], t["deleted_ms"])
                self.companies[company.id] = company
