"""Field mapping BC <-> canonical <-> Graph (BC's Contact Sync field mapping)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from contactsync.engine import mapping as m
from contactsync.schemas.contacts import BcContact, CanonicalContact, GraphContact

BC_WIRE: dict[str, Any] = {
    "@odata.etag": 'W/"JzE5OzEyMzQ1Njc4OTAxMjM0NTY3ODkwMTsn"',
    "id": "5d115c9c-44e3-ea11-bb43-000d3a2feca1",
    "number": "CT000123",
    "type": "Person",
    "displayName": "Anna Maria de Vries",
    "jobTitle": "Buyer",
    "companyName": "Contoso",
    "addressLine1": "Main Street 1",
    "addressLine2": "Building B",
    "city": "Seattle",
    "state": "WA",
    "country": "US",
    "postalCode": "98052",
    "phoneNumber": "+1 425 555 0100",
    "mobilePhoneNumber": "+1 425 555 0101",
    "email": "Anna@Contoso.com",
    "website": "https://contoso.com",
    "privacyBlocked": False,
    "lastModifiedDateTime": "2026-05-01T10:00:00Z",
}


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("Anna", ("Anna", "", "")),
        ("Anna Vries", ("Anna", "", "Vries")),
        ("Anna Maria Vries", ("Anna", "Maria", "Vries")),
        ("Anna Maria de Vries", ("Anna Maria", "de", "Vries")),
        ("  Anna   Vries", ("Anna", "", "Vries")),  # runs of spaces count as one
        ("Anna ", ("Anna", "", "")),  # BC keeps the empty last part as the surname
        ("", ("", "", "")),
        ("A" * 40 + " B", ("A" * 30, "", "B")),  # parts are Text[30]
    ],
)
def test_split_display_name_follows_bc_name_breakdown(
    name: str, parts: tuple[str, str, str]
) -> None:
    assert m.split_display_name(name) == parts


def test_bc_to_canonical_reads_every_mapped_field() -> None:
    c = m.canonical_from_bc(BC_WIRE)
    assert c["display_name"] == "Anna Maria de Vries"
    assert (c["given_name"], c["middle_name"], c["surname"]) == ("Anna Maria", "de", "Vries")
    assert c["street"] == "Main Street 1\nBuilding B"
    assert c["business_phone"] == "+1 425 555 0100"
    assert c["country"] == "US"
    assert c["website"] == "https://contoso.com"


def test_canonical_matches_the_pydantic_contract() -> None:
    assert set(m.CANONICAL_FIELDS) == set(CanonicalContact.model_fields)
    c = m.canonical_from_bc(BC_WIRE)
    assert m.from_model(m.to_model(c)) == c
    BcContact.model_validate(BC_WIRE)  # the sample is a valid wire contact


def test_bc_to_graph_sets_every_field_tag_and_category() -> None:
    body = m.graph_fields_from_canonical(m.canonical_from_bc(BC_WIRE), BC_WIRE["id"])
    GraphContact.model_validate({"id": "x", **body})
    assert body["givenName"] == "Anna Maria" and body["surname"] == "Vries"
    assert body["emailAddresses"] == [
        {"address": "Anna@Contoso.com", "name": "Anna Maria de Vries"}
    ]
    assert body["businessPhones"] == ["+1 425 555 0100"]
    assert body["businessAddress"]["street"] == "Main Street 1\nBuilding B"
    assert body["businessAddress"]["countryOrRegion"] == "US"
    assert body["businessHomePage"] == "https://contoso.com"
    assert body["categories"] == ["Business Central"]
    assert body["singleValueExtendedProperties"] == [
        {"id": m.BC_ID_PROPERTY, "value": BC_WIRE["id"]}
    ]
    assert m.BC_ID_PROPERTY == "String {f4c1a0e2-5b7d-4c8e-9a3f-2d6b8e1c7a90} Name BcContactId"


def test_push_overwrites_blanks_but_keeps_outlooks_other_addresses() -> None:
    existing = {
        "id": "g1",
        "emailAddresses": [
            {"address": "old@contoso.com", "name": "x"},
            {"address": "private@home.example", "name": "x"},
            {"address": "ANNA@contoso.com", "name": "dup of the new primary"},
        ],
        "businessPhones": ["1", "2"],
        "categories": ["VIP"],
        "jobTitle": "Old title",
    }
    bc = {**BC_WIRE, "jobTitle": ""}
    body = m.graph_fields_from_canonical(m.canonical_from_bc(bc), bc["id"], existing)
    assert [e["address"] for e in body["emailAddresses"]] == [
        "Anna@Contoso.com",
        "private@home.example",
    ]
    assert body["jobTitle"] is None  # a blank in BC clears Outlook
    assert body["businessPhones"] == ["+1 425 555 0100", "2"]
    assert body["categories"] == ["VIP", "Business Central"]


def test_graph_to_canonical_reads_the_first_address_and_handles_crlf() -> None:
    graph = {
        "id": "g1",
        "displayName": "Bob Smith",
        "emailAddresses": [{"address": "bob@x.com"}, {"address": "b@y.com"}],
        "businessPhones": [],
        "businessAddress": {"street": "Line 1\r\nLine 2\r\n", "countryOrRegion": "DE"},
    }
    c = m.canonical_from_graph(graph)
    assert c["email"] == "bob@x.com"
    assert c["street"] == "Line 1\nLine 2"
    assert c["business_phone"] == ""
    assert c["country"] == "DE"


def test_graph_email_falls_back_to_primary_and_name_to_parts() -> None:
    graph = {"id": "g", "givenName": "Eve", "surname": "Adams",
             "primaryEmailAddress": {"address": "eve@x.com"}}
    c = m.canonical_from_graph(graph)
    assert c["email"] == "eve@x.com"
    assert c["display_name"] == "Eve Adams"


@pytest.mark.parametrize(
    ("street", "lines"),
    [
        ("A", ("A", "")),
        ("A\nB", ("A", "B")),
        ("A\r\nB", ("A", "B")),
        ("A\nB\nC", ("A", "B, C")),
        ("A\r\nB\r\n", ("A", "B")),
    ],
)
def test_street_splits_on_the_first_line_feed(street: str, lines: tuple[str, str]) -> None:
    assert m.split_street(street) == lines


def test_outlook_to_new_bc_contact_is_a_person_and_skips_bad_fields() -> None:
    graph = {
        "id": "g1",
        "displayName": "Bob Smith",
        "emailAddresses": [{"address": "bob@x.com"}],
        "businessPhones": ["call me maybe"],
        "mobilePhone": "+49 170 1234567",
        "jobTitle": "J" * 31,
        "businessAddress": {
            "street": "S1\nS2",
            "postalCode": "ab1 2cd",
            "countryOrRegion": "Germany",
        },
    }
    fields, issues = m.bc_fields_from_canonical(m.canonical_from_graph(graph))
    assert fields["type"] == "Person"
    assert fields["displayName"] == "Bob Smith"
    assert fields["addressLine1"] == "S1" and fields["addressLine2"] == "S2"
    assert fields["postalCode"] == "AB1 2CD"  # a Code field: BC stores upper case
    assert "phoneNumber" not in fields and "jobTitle" not in fields
    assert "country" in fields  # "GERMANY" is 7 chars: fits Code[10]
    assert {(i.field, i.reason) for i in issues} == {
        ("phoneNumber", "must not contain letters"),
        ("jobTitle", "longer than 30 characters"),
    }


def test_update_into_bc_sends_only_what_differs() -> None:
    c = m.canonical_from_bc(BC_WIRE)
    c["city"] = "Redmond"
    c["email"] = "not-an-email"
    changes, issues = m.bc_fields_from_canonical(c, current=BC_WIRE)
    assert changes == {"city": "Redmond"}
    assert [i.field for i in issues] == ["email"]


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("displayName", "x" * 100, True),
        ("displayName", "x" * 101, False),
        ("displayName", "  ", False),
        ("email", "a@b.co", True),
        ("email", "a b@c.de", False),
        ("email", "x" * 75 + "@b.com", False),  # 81 > 80
        ("phoneNumber", "+1 (425) 555-0100 ext. 5", False),  # letters
        ("phoneNumber", "+1 (425) 555-0100", True),
        ("country", "NLD", True),
        ("country", "Netherlands", False),  # Code[10]
        ("postalCode", "1" * 21, False),
        ("addressLine2", "y" * 51, False),
    ],
)
def test_bc_field_rules(field: str, value: str, ok: bool) -> None:
    assert (m.bc_field_problem(field, value) is None) is ok


def test_content_hash_is_stable_and_normalised() -> None:
    c = m.canonical_from_bc(BC_WIRE)
    variant = dict(c)
    variant["email"] = "  anna@CONTOSO.com "
    variant["city"] = "Seattle  "
    variant["given_name"] = "Other"  # name parts follow displayName: not hashed
    assert m.content_hash(c) == m.content_hash(variant)  # type: ignore[arg-type]
    variant["city"] = "Tacoma"
    assert m.content_hash(c) != m.content_hash(variant)  # type: ignore[arg-type]
    assert m.content_hash(c) == "" + m.content_hash(m.canonical_from_bc(dict(BC_WIRE)))


def test_round_trip_bc_graph_bc_keeps_the_content() -> None:
    c = m.canonical_from_bc(BC_WIRE)
    graph = {"id": "g", **m.graph_fields_from_canonical(c, BC_WIRE["id"])}
    back = m.canonical_from_graph(graph)
    assert m.content_hash(back) == m.content_hash(c)
    assert m.bc_id_of(graph) == BC_WIRE["id"]
    fields, issues = m.bc_fields_from_canonical(back, current=BC_WIRE)
    assert fields == {} and issues == []


def test_change_key_from_etag() -> None:
    assert m.graph_change_key({"@odata.etag": 'W/"EQAAABYAAA"'}) == "EQAAABYAAA"
    assert m.graph_change_key({"changeKey": "k1", "@odata.etag": 'W/"x"'}) == "k1"


def test_mapping_is_fast_enough_for_100k_contacts() -> None:
    started = time.perf_counter()
    for _ in range(10_000):
        c = m.canonical_from_bc(BC_WIRE)
        m.content_hash(c)
        m.graph_fields_from_canonical(c, "id")
    # 10k in well under a second on a laptop; 3 s leaves room for slow CI machines.
    assert time.perf_counter() - started < 3.0
