"""Conformance of the BC emulator's contacts API with BC's API v2.0 documentation, driven by the
product's BcClient and, where the wire matters, by plain httpx."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.clients.errors import Conflict, Invalid, NotFound
from contactsync.emulators.bc.state import MAX_LENGTH
from tests.emulators.bc_fixtures import RunningBc, bc, bc_module, client

__all__ = ["bc", "bc_module", "client"]


def error_of(resp: httpx.Response) -> tuple[str, str]:
    body = resp.json()
    return body["error"]["code"], body["error"]["message"]


async def test_paging_to_the_end_with_maxpagesize(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.seed(persons=230, companies=20)
    bc.emulator.reset_counters()
    pages = [p async for p in client.iter_contact_pages(page_size=40)]
    assert [len(p) for p in pages] == [40] * 6 + [10]
    ids = [c["id"] for p in pages for c in p]
    assert len(set(ids)) == 250
    gets = bc.emulator.counters_snapshot()["by_route"]
    assert sum(r["count"] for r in gets if r["method"] == "GET") == 7

    # On the wire: absolute nextLink from the request's host, Preference-Applied echoed.
    async with httpx.AsyncClient() as http:
        r = await http.get(bc.contacts_url, headers={"Prefer": "odata.maxpagesize=100"})
        assert r.headers["Preference-Applied"] == "odata.maxpagesize=100"
        body = r.json()
        assert body["@odata.nextLink"].startswith(bc.api + "/companies(")
        assert all(c["@odata.etag"].startswith('W/"JzQ0O') for c in body["value"])
        r = await http.get(bc.contacts_url, params={"$top": "20001"})
        assert r.status_code == 413
        r = await http.get(bc.contacts_url, params={"$top": "5"})
        assert len(r.json()["value"]) == 5 and "@odata.nextLink" not in r.json()


async def test_contact_shape_is_api_v2(bc: RunningBc, client: BcClient) -> None:
    created = await client.create_contact({"displayName": "Anna Andersen", "type": "Person",
                                           "email": "anna@contoso.example"})
    expected = {
        "@odata.etag", "id", "number", "type", "displayName", "jobTitle", "companyNumber",
        "companyName", "contactBusinessRelation", "addressLine1", "addressLine2", "city",
        "state", "country", "postalCode", "phoneNumber", "mobilePhoneNumber", "email",
        "website", "searchName", "privacyBlocked", "taxRegistrationNumber",
        "lastInteractionDate", "lastModifiedDateTime",
    }
    assert expected <= set(created)
    assert not {"firstName", "surname", "middleName"} & set(created)
    assert created["number"] == "CT000001"
    assert created["searchName"] == "ANNA ANDERSEN"
    assert created["lastModifiedDateTime"].endswith("Z")
    assert len(created["lastModifiedDateTime"].split(".")[1]) == 4  # 3 digits + Z


async def test_changed_since_with_person_filter(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.seed(persons=50, companies=5)
    people = [c for c in bc.emulator.contacts() if c["type"] == "Person"]
    company = next(c for c in bc.emulator.contacts() if c["type"] == "Company")
    watermark = max(parse_bc_datetime(c["lastModifiedDateTime"]) for c in bc.emulator.contacts())
    for p in people[:3]:
        bc.emulator.update_contact(p["id"], {"jobTitle": "Buyer"})
    bc.emulator.update_contact(company["id"], {"city": "Oslo"})

    changed = await client.list_changed_since(watermark, overlap=timedelta(0),
                                              extra_filter="type eq 'Person'")
    assert sorted(c["id"] for c in changed) == sorted(p["id"] for p in people[:3])
    everything = await client.list_changed_since(watermark, overlap=timedelta(0))
    assert len(everything) == 4
    # Timestamps are strictly increasing across writes.
    stamps = [parse_bc_datetime(c["lastModifiedDateTime"]) for c in everything]
    assert len(set(stamps)) == 4


async def test_filter_and_or_combinations(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.seed(persons=120, companies=6, without_email=7, privacy_blocked=4)
    rows = bc.emulator.contacts()
    cases: dict[str, Callable[[dict[str, Any]], bool]] = {
        "(city eq 'Seattle' or city eq 'Redmond') and type eq 'Person'":
            lambda c: c["city"] in ("Seattle", "Redmond") and c["type"] == "Person",
        "type eq 'Person' and email ne '' and privacyBlocked eq false":
            lambda c: c["type"] == "Person" and c["email"] != "" and not c["privacyBlocked"],
        "startswith(displayName,'Anna') or contains(email,'tanaka')":
            lambda c: c["displayName"].startswith("Anna") or "tanaka" in c["email"],
        "not (type eq 'Person') or postalCode ge '98000' and postalCode le '98999'":
            lambda c: c["type"] != "Person" or "98000" <= c["postalCode"] <= "98999",
        "privacyBlocked": lambda c: c["privacyBlocked"],
    }
    for flt, pred in cases.items():
        got = sorted(c["id"] for c in await client.list_contacts(flt, page_size=17))
        assert got == sorted(c["id"] for c in rows if pred(c)), flt
        assert got, flt

    one = next(c for c in rows if c["email"])
    found = await client.list_contacts(f"email eq '{one['email']}'")
    assert [c["id"] for c in found] == [one["id"]]

    async with httpx.AsyncClient() as http:
        r = await http.get(bc.contacts_url, params={"$filter": "nosuch eq 'x'"})
        assert r.status_code == 400 and "nosuch" in error_of(r)[1]
        r = await http.get(bc.contacts_url, params={"$filter": "city eq"})
        assert r.status_code == 400
        r = await http.get(bc.contacts_url, params={"$select": "id,email", "$top": "2"})
        assert set(r.json()["value"][0]) == {"@odata.etag", "id", "email"}
        r = await http.get(bc.contacts_url, params={"$orderby": "displayName desc"})
        names = [c["displayName"] for c in r.json()["value"]]
        assert names == sorted(names, reverse=True)


async def test_post_requires_display_name(bc: RunningBc, client: BcClient) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.post(bc.contacts_url, json={"type": "Person", "email": "a@b.example"})
    assert r.status_code == 400
    assert error_of(r)[1] == 'A "displayName" must be provided.'
    with pytest.raises(Invalid) as exc:
        await client.create_contact({"type": "Person", "displayName": "  "})
    assert exc.value.status == 400
    assert bc.emulator.contacts() == []


@pytest.mark.parametrize("stale_status", [412, 409])
async def test_patch_and_delete_need_if_match(
    bc: RunningBc, client: BcClient, stale_status: int
) -> None:
    """A stale If-Match: 412, or 409 `Request_EntityChanged` as BC's error-code table reads
    (config.stale_etag_status); the client makes both a Conflict."""
    bc.emulator.config.stale_etag_status = stale_status
    created = await client.create_contact({"displayName": "Ben Brown", "type": "Person"})
    url = f"{bc.contacts_url}({created['id']})"
    async with httpx.AsyncClient() as http:
        r = await http.patch(url, json={"city": "Oslo"})
        assert r.status_code == 400 and error_of(r)[0] == "BadRequest_InvalidToken"
        r = await http.delete(url)
        assert r.status_code == 400
        r = await http.patch(url, json={"city": "Oslo"}, headers={"If-Match": "*"})
        assert r.status_code == 200 and r.json()["city"] == "Oslo"
        r = await http.patch(url, json={"city": "Rome"},
                             headers={"If-Match": created["@odata.etag"]})
        assert r.status_code == stale_status and error_of(r)[0] == "Request_EntityChanged"

    with pytest.raises(Conflict):
        await client.update_contact(created["id"], {"city": "Rome"}, created["@odata.etag"])
    current = await client.get_contact(created["id"])
    updated = await client.update_contact(created["id"], {"city": "Rome"},
                                          current["@odata.etag"])
    assert updated["city"] == "Rome"
    assert updated["@odata.etag"] != current["@odata.etag"]
    assert updated["lastModifiedDateTime"] > current["lastModifiedDateTime"]

    with pytest.raises(Conflict):
        await client.delete_contact(created["id"], current["@odata.etag"])
    await client.delete_contact(created["id"], updated["@odata.etag"])
    with pytest.raises(NotFound):
        await client.get_contact(created["id"])
    assert [t["id"] for t in bc.emulator.tombstones()] == [created["id"]]


@pytest.mark.parametrize("field", sorted(set(MAX_LENGTH) - {"number"}))
async def test_field_lengths_are_enforced(bc: RunningBc, field: str) -> None:
    limit = MAX_LENGTH[field]
    value = "1" * (limit + 1) if "phone" in field.lower() else "x" * (limit + 1)
    if field == "email":
        value = "a" * (limit - 9) + "@x.example"  # 81 characters
    if field == "companyNumber":
        value = "C" * (limit + 1)
    async with httpx.AsyncClient() as http:
        r = await http.post(bc.contacts_url, json={"displayName": "X", field: value})
        assert r.status_code == 400, field
        code, message = error_of(r)
        assert code == "Application_StringExceededLength"
        assert f"must be less than or equal to {limit} characters" in message
        ok = value[:limit] if field not in ("email", "companyNumber") else None
        if ok is not None:
            r = await http.post(bc.contacts_url, json={"displayName": "X", field: ok})
            assert r.status_code == 201, (field, r.text)


async def test_phone_with_letters_and_bad_values(bc: RunningBc, client: BcClient) -> None:
    with pytest.raises(Invalid) as exc:
        await client.create_contact({"displayName": "X", "phoneNumber": "+45 CALL ME"})
    assert exc.value.code == "Application_FieldValidationException"
    assert "must not contain letters" in str(exc.value)
    with pytest.raises(Invalid):
        await client.create_contact({"displayName": "X", "type": "Robot"})
    async with httpx.AsyncClient() as http:  # the client leaves unknown properties out
        r = await http.post(bc.contacts_url, json={"displayName": "X", "nickname": "x"})
        assert r.status_code == 400 and error_of(r)[0] == "BadRequest"
    with pytest.raises(Invalid):
        await client.create_contact({"displayName": "X", "email": "not an email"})
    ok = await client.create_contact({"displayName": "X", "phoneNumber": "+45 (70) 10-20/30"})
    assert ok["phoneNumber"] == "+45 (70) 10-20/30"


async def test_company_link_and_number_rename(bc: RunningBc, client: BcClient) -> None:
    company = await client.create_contact({"displayName": "Fabrikam", "type": "Company"})
    assert company["companyNumber"] == company["number"]
    person = await client.create_contact({"displayName": "Eva", "type": "Person",
                                          "companyNumber": company["number"]})
    assert person["companyName"] == "Fabrikam"
    with pytest.raises(Invalid):
        await client.create_contact({"displayName": "Eva", "companyNumber": "NOPE"})
    renamed = await client.update_contact(person["id"], {"number": "EVA1"}, person["@odata.etag"])
    assert renamed["number"] == "EVA1" and renamed["id"] == person["id"]


async def test_snapshot_round_trip(bc: RunningBc, client: BcClient, tmp_path: Path) -> None:
    bc.emulator.seed(persons=30, companies=3)
    path = tmp_path / "bc.json"
    bc.emulator.save_snapshot(path)
    before = sorted((c["id"], c["@odata.etag"]) for c in bc.emulator.contacts())
    bc.emulator.reset()
    assert bc.emulator.contacts() == []
    bc.emulator.load_snapshot(path)
    assert sorted((c["id"], c["@odata.etag"]) for c in bc.emulator.contacts()) == before
    assert len(await client.list_contacts(page_size=7)) == 33
    after = await client.create_contact({"displayName": "New"})
    assert after["number"] == "CT000034"


async def test_admin_api(bc: RunningBc) -> None:
    async with httpx.AsyncClient(base_url=bc.url) as http:
        r = await http.post("/_emulator/seed", json={"persons": 10, "companies": 2,
                                                     "without_email": 2, "duplicate_emails": 2,
                                                     "privacy_blocked": 1})
        assert r.status_code == 200 and r.json()["total"] == 12
        rows = (await http.get("/_emulator/contacts")).json()["value"]
        people = [c for c in rows if c["type"] == "Person"]
        assert sum(1 for c in people if not c["email"]) == 2
        assert sum(1 for c in people if c["privacyBlocked"]) == 1
        emails = [c["email"].lower() for c in people if c["email"]]
        assert len(emails) - len(set(emails)) >= 1
        r = await http.post("/_emulator/contacts", json={"displayName": "Act", "type": "Person"})
        assert r.status_code == 201
        cid = r.json()["id"]
        r = await http.patch(f"/_emulator/contacts/{cid}", json={"city": "Oslo"})
        assert r.json()["city"] == "Oslo"
        assert (await http.delete(f"/_emulator/contacts/{cid}")).status_code == 204
        assert (await http.get("/_emulator/tombstones")).json()["value"][0]["id"] == cid
        await http.get(bc.contacts_url.replace(bc.url, ""))
        counters = (await http.get("/_emulator/counters")).json()
        assert counters["total"] == 1, counters  # admin calls are not counted
        await http.delete("/_emulator/counters")
        assert (await http.get("/_emulator/counters")).json()["total"] == 0
        r = await http.post("/_emulator/faults", json={"kind": "status", "status": 500})
        assert r.json()["pending"] == 1
        assert (await http.get(bc.contacts_url)).status_code == 500
        assert (await http.get(bc.contacts_url)).status_code == 200


async def test_large_listing_is_fast(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.seed(persons=20_000, companies=100)
    start = datetime.now(UTC)
    got = 0
    async for page in client.iter_contact_pages(page_size=20_000):
        got += len(page)
    assert got == 20_100
    assert datetime.now(UTC) - start < timedelta(seconds=10)
    # A watermark query near the end returns just the tail (bisect on the modified index).
    stamps = sorted(c["lastModifiedDateTime"] for c in bc.emulator.contacts())
    tail = await client.list_changed_since(parse_bc_datetime(stamps[-3]), overlap=timedelta(0))
    assert len(tail) == 2
