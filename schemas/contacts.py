"""Contact contracts: the BC API v2.0 contact, the Graph contact, and our canonical contact.

Wire models (`BcContact`, `GraphContact`) use the services' own camelCase names as aliases and
keep unknown fields (`extra="allow"`), so a newer service version never breaks parsing. The
canonical contact is the set of fields we synchronize (BC's Contact Sync field mapping); the field
map
between the three lives in `contactsync.engine.mapping`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=False
    )


class ContactType(StrEnum):
    PERSON = "Person"
    COMPANY = "Company"


class BcContact(_Wire):
    """A contact as BC API v2.0 returns it (page 30071 "APIV2 - Contacts")."""

    id: str
    number: str = ""
    type: ContactType = ContactType.PERSON
    display_name: str = ""
    job_title: str = ""
    company_number: str = ""
    company_name: str = ""
    contact_business_relation: str = ""
    address_line1: str = ""
    address_line2: str = ""
    city: str = ""
    state: str = ""
    country: str = ""
    postal_code: str = ""
    phone_number: str = ""
    mobile_phone_number: str = ""
    email: str = ""
    website: str = ""
    search_name: str = ""
    privacy_blocked: bool = False
    tax_registration_number: str = ""
    last_interaction_date: str | None = None
    last_modified_date_time: datetime | None = None
    etag: str = Field(default="", alias="@odata.etag")


class EmailAddress(_Wire):
    name: str | None = None
    address: str | None = None


class PhysicalAddress(_Wire):
    street: str | None = None
    city: str | None = None
    state: str | None = None
    country_or_region: str | None = None
    postal_code: str | None = None


class ExtendedProperty(_Wire):
    id: str
    value: str | None = None


class GraphContact(_Wire):
    """An Outlook personal contact as Microsoft Graph v1.0 returns it."""

    id: str
    change_key: str | None = None
    parent_folder_id: str | None = None
    created_date_time: datetime | None = None
    last_modified_date_time: datetime | None = None
    display_name: str | None = None
    given_name: str | None = None
    middle_name: str | None = None
    surname: str | None = None
    initials: str | None = None
    nick_name: str | None = None
    title: str | None = None
    job_title: str | None = None
    company_name: str | None = None
    department: str | None = None
    email_addresses: list[EmailAddress] = Field(default_factory=list)
    business_phones: list[str] = Field(default_factory=list)
    home_phones: list[str] = Field(default_factory=list)
    mobile_phone: str | None = None
    business_address: PhysicalAddress | None = None
    home_address: PhysicalAddress | None = None
    other_address: PhysicalAddress | None = None
    business_home_page: str | None = None
    categories: list[str] = Field(default_factory=list)
    personal_notes: str | None = None
    single_value_extended_properties: list[ExtendedProperty] = Field(default_factory=list)
    etag: str | None = Field(default=None, alias="@odata.etag")


class CanonicalContact(BaseModel):
    """The fields we synchronize, in one shape for both sides (BC's Contact Sync field mapping).

    Empty string means "no value". Names follow BC's fields; `street` holds the address lines
    joined by a line feed, as Graph's businessAddress.street does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    display_name: str = ""
    given_name: str = ""
    middle_name: str = ""
    surname: str = ""
    email: str = ""
    company_name: str = ""
    job_title: str = ""
    business_phone: str = ""
    mobile_phone: str = ""
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    website: str = ""
