"""BC environments differ in their contact fields: `jobTitle` came with BC 2024. The emulator's
older profile (`job_title_field=False`) and its `$metadata`, and the client reading that
document (issue 12, defect 9)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from contactsync.clients.bc import BcClient, contact_properties
from contactsync.emulators.bc import BcEmulatorConfig
from tests.emulators.bc_fixtures import RunningBc, bc, bc_module, client, make_client, start_bc

__all__ = ["bc", "bc_module", "client"]


@pytest.fixture(scope="module")
def older() -> Iterator[RunningBc]:
    running = start_bc(BcEmulatorConfig.for_tests(job_title_field=False))
    yield running
    running.server.stop()


def _error(resp: httpx.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


async def test_metadata_declares_the_environments_contact_fields(
    bc: RunningBc, older: RunningBc
) -> None:
    async with httpx.AsyncClient() as http:
        current = contact_properties((await http.get(f"{bc.api}/$metadata")).content)
        old = contact_properties((await http.get(f"{older.api}/$metadata")).content)
    assert current is not None and old is not None
    assert "jobTitle" in current and "jobTitle" not in old
    assert current - old == {"jobTitle"}
    assert {"id", "displayName", "email", "type", "lastModifiedDateTime"} <= old


async def test_an_older_bc_refuses_job_title_anywhere(older: RunningBc) -> None:
    person = older.emulator.create_contact({"displayName": "Old", "type": "Person"})
    assert "jobTitle" not in person
    url = older.contacts_url
    async with httpx.AsyncClient() as http:
        assert _error(await http.get(url, params={"$select": "id,jobTitle"})) == (
            400, "BadRequest_NotFound")
        assert _error(await http.get(url, params={"$filter": "jobTitle eq 'x'"})) == (
            400, "BadRequest_NotFound")
        assert _error(await http.post(url, json={"displayName": "X", "jobTitle": "x"})) == (
            400, "BadRequest")
        listed = (await http.get(url)).json()["value"]
        assert listed and all("jobTitle" not in c for c in listed)


async def test_the_client_selects_and_writes_only_existing_fields(older: RunningBc) -> None:
    client: BcClient = await make_client(older)
    try:
        created = await client.create_contact({"displayName": "Ann", "type": "Person",
                                               "jobTitle": "Buyer", "email": "ann@x.test"})
        assert created["email"] == "ann@x.test" and "jobTitle" not in created
        updated = await client.update_contact(created["id"], {"jobTitle": "Boss", "city": "Oslo"},
                                              created["@odata.etag"])
        assert updated["city"] == "Oslo"
        listed = await client.list_contacts("type eq 'Person'",
                                            select=["id", "displayName", "jobTitle"])
        assert {c["displayName"] for c in listed} >= {"Ann"}
        assert await client.contact_fields() == contact_properties(
            httpx.get(f"{older.api}/$metadata").content)
    finally:
        await client.aclose()


async def test_a_current_bc_keeps_job_title(bc: RunningBc, client: BcClient) -> None:
    created = await client.create_contact({"displayName": "Bo", "type": "Person",
                                           "jobTitle": "Buyer"})
    [listed] = await client.list_contacts(select=["id", "jobTitle"])
    assert created["jobTitle"] == listed["jobTitle"] == "Buyer"
