"""Contract tests: Microsoft's own request/response examples for every BC API v2.0 operation the
product uses (JSON fixtures beside this file, each naming its documentation page). Two sides:
the emulator's answers have the documented shape, and the product's client and webhook parsing
read the documented examples."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from contactsync.clients.bc import BcClient, error_from_response, parse_bc_datetime
from contactsync.clients.errors import Conflict, Invalid
from contactsync.clients.resilience import RetryPolicy
from contactsync.emulators.bc import BcEmulatorConfig
from contactsync.emulators.bc.app import OTHER_WEBHOOK_RESOURCES
from contactsync.engine.mapping import canonical_from_bc
from contactsync.producers.bc_changes import contact_id_from_resource
from contactsync.producers.webhook.parsing import parse_bc
from contactsync.schemas.contacts import BcContact
from tests.emulators.bc_fixtures import Receiver, RunningBc, receiver, start_bc

__all__ = ["receiver"]

HERE = Path(__file__).parent / "bc"
TYPES = {"GUID": str, "string": str, "boolean": bool, "date": str, "datetime": str}


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    return data


def body(name: str, part: str = "response") -> Any:
    return fixture(name)[part]["body"]


@pytest.fixture(scope="module")
def bc_env() -> Iterator[RunningBc]:
    running = start_bc(BcEmulatorConfig.for_tests(stale_etag_status=409))
    yield running
    running.server.stop()


@pytest.fixture
def bc(bc_env: RunningBc) -> RunningBc:
    bc_env.emulator.reset()
    bc_env.emulator.config.webhooks_supported = True
    return bc_env


def test_every_fixture_names_its_page() -> None:
    names = sorted(p.stem for p in HERE.glob("*.json"))
    assert len(names) >= 19
    for name in names:
        sources = fixture(name)["source"]
        for source in sources if isinstance(sources, list) else [sources]:
            assert source["title"] and source["url"].startswith("https://learn.microsoft.com/")


# --- the emulator answers as documented --------------------------------------------------------


def test_companies(bc: RunningBc) -> None:
    listed = httpx.get(f"{bc.api}/companies").json()
    documented = body("companies_list")
    assert set(documented) <= set(listed)
    one = body("company_get")
    for company in listed["value"]:
        assert set(documented["value"][0]) | set(one) <= set(company)
        assert {k: type(v) for k, v in company.items() if k in one} == {
            k: type(v) for k, v in one.items()}


def test_contact_get_and_the_resource_type(bc: RunningBc) -> None:
    made = bc.emulator.create_contact({"displayName": "Anna", "type": "Person"})
    got = httpx.get(f"{bc.contacts_url}({made['id']})").json()
    assert set(body("contact_get")) <= set(got)
    representation = fixture("contact_resource")["json_representation"]
    assert set(got) - {"@odata.context", "@odata.etag"} == set(representation)
    for name, kind in representation.items():
        assert isinstance(got[name], TYPES.get(kind, str)), name


def _creatable(documented: dict[str, Any]) -> dict[str, Any]:
    """The create example without what no client can send: read-only properties (the resource
    table marks lastModifiedDateTime read-only; lastInteractionDate is computed) and a company
    relation to a contact number ("17806") that only Microsoft's demo data has."""
    skip = {"lastModifiedDateTime", "lastInteractionDate", "companyNumber", "companyName"}
    return {k: v for k, v in documented.items() if k not in skip}


def test_contact_create_update_delete(bc: RunningBc) -> None:
    create = fixture("contact_create")
    sent = _creatable(create["request"]["body"])
    r = httpx.post(bc.contacts_url, json=sent)
    assert r.status_code == create["response"]["status"]
    created = r.json()
    assert set(create["response"]["body"]) <= set(created)
    # searchName: BC fills a blank one from the name (Contact's OnValidate), as we do.
    assert {k: created[k] for k in sent if k != "searchName"} == {
        k: v for k, v in sent.items() if k != "searchName"}

    update = fixture("contact_update")
    url = f"{bc.contacts_url}({created['id']})"
    patch = {**update["request"]["body"], "id": created["id"]}
    assert httpx.patch(url, json=patch).status_code == 400, "If-Match is required"
    r = httpx.patch(url, json=patch, headers={"If-Match": created["@odata.etag"]})
    assert r.status_code == update["response"]["status"]
    assert set(update["response"]["body"]) <= set(r.json())

    delete = fixture("contact_delete")
    assert httpx.delete(url).status_code == 400, "If-Match is required"
    r = httpx.delete(url, headers={"If-Match": r.json()["@odata.etag"]})
    assert r.status_code == delete["response"]["status"] and r.content == b""


def test_server_driven_paging(bc: RunningBc) -> None:
    bc.emulator.seed(persons=350)
    total = len(bc.emulator.contacts())
    paging = fixture("paging")
    r = httpx.get(bc.contacts_url, headers=paging["request"]["headers"])
    assert len(r.json()["value"]) == 300 and "@odata.nextLink" in r.json()
    assert r.headers["Preference-Applied"] == paging["request"]["headers"]["Prefer"]
    rest = httpx.get(r.json()["@odata.nextLink"], headers=paging["request"]["headers"]).json()
    assert len(rest["value"]) == total - 300 and "@odata.nextLink" not in rest
    over = httpx.get(bc.contacts_url, headers={"Prefer": "odata.maxpagesize=30000"})
    assert over.headers["Preference-Applied"] == (
        f"odata.maxpagesize={paging['max_page_size_online']}")


def test_changed_since_query(bc: RunningBc) -> None:
    query = dict(fixture("filter_changed_since")["request"]["query"])
    old = bc.emulator.create_contact({"displayName": "Old"})
    fresh = [bc.emulator.create_contact({"displayName": f"New {i}"}) for i in range(3)]
    query["$filter"] = f"lastModifiedDateTime gt {old['lastModifiedDateTime']}"
    rows = httpx.get(bc.contacts_url, params=query).json()["value"]
    assert [c["id"] for c in rows] == [c["id"] for c in fresh] and old["id"] not in rows


def test_subscriptions_handshake_and_notifications(bc: RunningBc, receiver: Receiver) -> None:
    company = bc.emulator.company_id
    resource = f"/api/v2.0/companies({company})/contacts"
    register = fixture("subscription_register")["request"]["body"]
    sent = {**register, "notificationUrl": receiver.url, "resource": resource}
    r = httpx.post(f"{bc.api}/subscriptions", json=sent)
    assert r.status_code == fixture("subscription_create")["response"]["status"]
    created = r.json()
    assert set(body("subscription_create")) <= set(created)
    handshake = fixture("validation_handshake")
    assert len(receiver.validations) == 1, "validationToken on the query string, answered 200"
    assert handshake["response"]["status"] == 200

    listed = httpx.get(f"{bc.api}/subscriptions").json()["value"]
    assert set(body("subscription_get")) <= set(listed[0])

    update = fixture("subscription_update")
    url = f"{bc.api}/subscriptions('{created['subscriptionId']}')"
    renewal = {**update["request"]["body"], "notificationUrl": receiver.url,
               "resource": resource}
    r = httpx.patch(url, json=renewal, headers={"If-Match": created["@odata.etag"]})
    assert r.status_code == update["response"]["status"]
    assert set(update["response"]["body"]) <= set(r.json())
    assert len(receiver.validations) == 2, "a renewal repeats the handshake"

    bc.emulator.create_contact({"displayName": "Notified"})
    bc.emulator.flush_notifications()
    receiver.wait_for(lambda rec: bool(rec.items()))
    documented = body("notification", "request")["value"]
    item = receiver.items()[0]
    assert set(item) == set(documented[0])
    assert item["changeType"] in {d["changeType"] for d in documented}
    shape = re.compile(r"^/?api/v2\.0/companies\([0-9a-f-]{36}\)/\w+\([0-9a-f-]{36}\)$")
    assert all(shape.match(d["resource"]) for d in documented if d["changeType"] != "collection")
    assert shape.match(item["resource"])

    delete = fixture("subscription_delete")
    assert re.search(r"subscriptions\('[^']+'\)$", delete["request"]["path"]), "quoted id"
    r = httpx.delete(url, headers={"If-Match": r.json()["@odata.etag"]})
    assert r.status_code == delete["response"]["status"]


@pytest.mark.parametrize("contacts", [True, False])
def test_webhook_supported_resources(bc: RunningBc, contacts: bool) -> None:
    documented = fixture("webhook_supported_resources")
    bc.emulator.set_webhooks_supported(contacts)
    url = (f"{bc.url}/v2.0/{bc.emulator.config.environment}"
           + documented["request"]["path"].replace("{companyId}", bc.emulator.company_id))
    got = httpx.get(url, params=documented["request"]["query"]).json()
    assert set(got) == set(documented["response"]["body"])
    assert all(set(row) == {"resource"} for row in got["value"])
    names = {row["resource"].removeprefix("v2.0/") for row in got["value"]}
    assert set(OTHER_WEBHOOK_RESOURCES) <= set(documented["supported_entities"])
    assert names - {"contacts"} <= set(documented["supported_entities"])
    assert ("contacts" in names) is contacts


def test_metadata_document(bc: RunningBc) -> None:
    documented = fixture("metadata")["response"]
    r = httpx.get(f"{bc.api}/$metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        documented["content_type"])
    root = ElementTree.fromstring(r.content)
    start = documented["body_start"]
    edmx = re.search(r'xmlns:edmx="([^"]+)"', start)
    edm = re.search(r'<Schema xmlns="([^"]+)"', start)
    assert edmx and edm
    assert root.tag == f"{{{edmx.group(1)}}}Edmx"
    version = re.search(r'Version="([^"]+)"', start)
    assert version and root.get("Version") == version.group(1)
    schema = root.find(f"{{{edmx.group(1)}}}DataServices/{{{edm.group(1)}}}Schema")
    assert schema is not None
    entity = schema.find(f"{{{edm.group(1)}}}EntityType[@Name='contact']")
    assert entity is not None
    assert entity.find(f"{{{edm.group(1)}}}Key/{{{edm.group(1)}}}PropertyRef") is not None
    props = entity.findall(f"{{{edm.group(1)}}}Property")
    assert props and all(p.get("Name") and p.get("Type") for p in props)


def test_stale_if_match_is_request_entity_changed(bc: RunningBc) -> None:
    documented = fixture("error_entity_changed")
    made = bc.emulator.create_contact({"displayName": "Stale"})
    bc.emulator.update_contact(made["id"], {"city": "Oslo"})
    r = httpx.patch(f"{bc.contacts_url}({made['id']})", json={"city": "Rome"},
                    headers={"If-Match": made["@odata.etag"]})
    assert r.status_code == 409
    row = documented["error_code_row"]
    assert r.json() == {"error": {"code": row["code"], "message": row["message"]}}
    assert set(r.json()["error"]) == set(documented["error_body_example"]["error"])


# --- the product reads the documented examples ------------------------------------------------


def _replay() -> httpx.MockTransport:
    """Microsoft's documented answers, served as they are written (no emulator in between)."""
    contact = body("contact_get")
    answers: dict[tuple[str, str], tuple[int, Any]] = {
        ("GET", "/companies"): (200, body("companies_list")),
        ("GET", f"/contacts({contact['id']})"): (200, contact),
        ("POST", "/contacts"): (201, body("contact_create")),
        ("PATCH", f"/contacts({contact['id']})"): (200, body("contact_update")),
        ("POST", "/subscriptions"): (201, body("subscription_create")),
        ("PATCH", "/subscriptions('c670ea73cacb459bb51dc1740da2f1db')"):
            (200, body("subscription_update")),
        ("GET", "/webhookSupportedResources"): (200, body("webhook_supported_resources")),
    }

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        for (method, suffix), (status, payload) in answers.items():
            if request.method == method and path.endswith(suffix):
                return httpx.Response(status, json=payload)
        return httpx.Response(404, json={"error": {"code": "BadRequest_NotFound",
                                                   "message": path}})

    return httpx.MockTransport(answer)


async def test_the_client_reads_documented_answers() -> None:
    http = httpx.AsyncClient(transport=_replay())
    documented = body("companies_list")["value"][0]
    client = await BcClient.create("http://127.0.0.1:1/v2.0/production/api/v2.0",
                                   documented["name"], http=http, policy=RetryPolicy.fast())
    try:
        assert client.company_id == documented["id"]
        contact = body("contact_get")
        got = await client.get_contact(contact["id"])
        model = BcContact.model_validate(got)
        assert (model.id, model.display_name, model.email) == (
            contact["id"], contact["displayName"], contact["email"])
        canonical = canonical_from_bc(got)
        assert canonical["city"] == contact["city"]
        assert canonical["street"] == f"{contact['addressLine1']}\n{contact['addressLine2']}"
        created = await client.create_contact(body("contact_create", "request"))
        assert created["id"] == body("contact_create")["id"]
        updated = await client.update_contact(contact["id"], {"number": "108001"}, "W/\"x\"")
        assert updated["number"] == "108001"

        assert await client.webhook_supported() is False, "the documented list has no contacts"
        sub = await client.create_subscription("https://contoso.com/myCallbacks", "state")
        expires = parse_bc_datetime(sub["expirationDateTime"])
        assert expires.tzinfo is not None and expires.year == 2021
        renewed = await client.renew_subscription(
            sub["subscriptionId"], "W/\"x\"", notification_url=sub["notificationUrl"],
            resource=sub["resource"], client_state=sub["clientState"])
        assert renewed["subscriptionId"] == sub["subscriptionId"]
    finally:
        await client.aclose()
        await http.aclose()


def test_the_webhook_reads_the_documented_notification() -> None:
    documented = body("notification", "request")
    items = parse_bc(json.dumps(documented).encode()).value
    assert [i.change_type for i in items] == [d["changeType"] for d in documented["value"]]
    assert [i.subscription_id for i in items] == [d["subscriptionId"] for d in documented["value"]]
    deleted = next(d for d in documented["value"] if d["changeType"] == "deleted")
    assert contact_id_from_resource(deleted["resource"].replace("/customers(", "/contacts(")) \
        == deleted["resource"].rsplit("(", 1)[1].rstrip(")")
    collection = next(d for d in documented["value"] if d["changeType"] == "collection")
    assert contact_id_from_resource(collection["resource"]) is None


def test_documented_errors_map_to_the_error_tree() -> None:
    documented = fixture("error_entity_changed")
    row = documented["error_code_row"]
    stale = json.dumps({"error": {"code": row["code"], "message": row["message"]}})
    for status in (409, 412):
        err = error_from_response(status, stale, {})
        assert isinstance(err, Conflict) and err.code == "Request_EntityChanged"
    other = error_from_response(400, json.dumps(documented["error_body_example"]), {})
    assert isinstance(other, Invalid) and other.code == "Unknown"
    assert "is not an option" in str(other)


def test_expiry_is_three_days_by_default() -> None:
    # "Working with webhooks": subscriptions expire after three days unless renewed.
    assert BcEmulatorConfig().subscription_lifetime_seconds == timedelta(days=3).total_seconds()
