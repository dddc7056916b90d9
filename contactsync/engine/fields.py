"""The contact field table: every synced field declared once. The mapping (engine/mapping.py),
the listings' `$select` (BC and Graph), the compact records of a full sync (engine/compact.py)
and the content hash all read it, so a field added here is read, kept, compared and written
everywhere, and Full sync cannot be blind to it.

A field whose `bc` and `graph` are both set maps one to one: `graph` is a Graph property, or
`businessAddress.<part>` for a part of the business address. The others (`composite`) are
mapped by code in mapping.py: the display name and its parts, the first email and phone, the
street (two BC lines, one Graph line); they still declare the properties they read, for
`$select` and the records.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str  # canonical
    bc: tuple[str, ...]  # BC API v2.0 properties (read, written, selected)
    graph: str  # Graph property, "businessAddress.<part>", or "" (composite, see graph_reads)
    bc_size: tuple[int, ...] = ()  # BC table 5050 sizes of `bc`, in order (writes are checked)
    graph_reads: tuple[str, ...] = ()  # a composite's Graph properties
    hashed: bool = True  # part of the synced content (the hash, conflicts, audits)
    code: bool = False  # a BC Code field: upper-cased on the way into BC
    phone: bool = False  # BC refuses letters in it
    composite: bool = False

    @property
    def graph_top(self) -> tuple[str, ...]:
        """The top-level Graph properties it reads (what `$select` names)."""
        return self.graph_reads if self.composite else (self.graph.split(".")[0],)


ADDRESS = "businessAddress"

FIELDS: tuple[Field, ...] = (
    Field("display_name", ("displayName",), "", (100,), ("displayName",), composite=True),
    # Name parts follow the display name (BC's NameBreakdown): never hashed, never sent to BC.
    Field("given_name", (), "", (), ("givenName",), hashed=False, composite=True),
    Field("middle_name", (), "", (), ("middleName",), hashed=False, composite=True),
    Field("surname", (), "", (), ("surname",), hashed=False, composite=True),
    Field("email", ("email",), "", (80,), ("emailAddresses",), composite=True),
    Field("company_name", ("companyName",), "companyName", (100,)),
    Field("job_title", ("jobTitle",), "jobTitle", (30,)),
    Field("business_phone", ("phoneNumber",), "", (30,), ("businessPhones",), phone=True,
          composite=True),
    Field("mobile_phone", ("mobilePhoneNumber",), "mobilePhone", (30,), phone=True),
    Field("street", ("addressLine1", "addressLine2"), "", (100, 50), (ADDRESS,),
          composite=True),
    Field("city", ("city",), f"{ADDRESS}.city", (30,)),
    Field("state", ("state",), f"{ADDRESS}.state", (30,)),
    Field("postal_code", ("postalCode",), f"{ADDRESS}.postalCode", (20,), code=True),
    Field("country", ("country",), f"{ADDRESS}.countryOrRegion", (10,), code=True),
    Field("website", ("website",), "businessHomePage", (255,)),
)

# What the planner reads besides the fields: ids, versions, eligibility, pairing.
BC_META: tuple[str, ...] = ("id", "type", "privacyBlocked", "lastModifiedDateTime")
GRAPH_META: tuple[str, ...] = ("id", "changeKey", "createdDateTime", "lastModifiedDateTime")
GRAPH_KEPT: tuple[str, ...] = ("categories",)  # not synced content, but kept on update


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def bc_select(fields: tuple[Field, ...]) -> tuple[str, ...]:
    return _unique([*BC_META[:2], *(p for f in fields for p in f.bc), *BC_META[2:]])


def graph_select(fields: tuple[Field, ...]) -> tuple[str, ...]:
    return _unique([*GRAPH_META, *(p for f in fields for p in f.graph_top), *GRAPH_KEPT])


def address_parts(fields: tuple[Field, ...]) -> tuple[str, ...]:
    """The business address's parts (street first: a composite that lives there)."""
    prefix = ADDRESS + "."
    return _unique(["street", *(f.graph[len(prefix):] for f in fields
                                if f.graph.startswith(prefix))])
