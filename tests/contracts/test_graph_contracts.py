"""Contract tests: Microsoft's documented Graph examples (tests/contracts/graph/*.json, each
naming its learn.microsoft.com page) against both our sides.

- The emulator answers each documented request with the documented status and at least the
  documented properties (the examples are often shortened, so extra properties are fine).
- The product reads each documented response and notification: the client's error mapping,
  the webhook's parsing, the subscription keeper's dates, and the client's own calls against
  a server that replays the documented answers.

Documented requests are replayed as written except for what names a tenant: `/me` becomes a
user (app-only access has no `/me`), placeholder ids become real ones, a subscription's mail
resource becomes a contact folder and its date a future one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from contactsync.clients.errors import Invalid, Unauthorized
from contactsync.clients.graph import GraphClient, bc_id_of
from contactsync.clients.graph_errors import graph_failure
from contactsync.http_server import BackgroundServer
from contactsync.producers.subscriptions import _expiry
from contactsync.producers.webhook.parsing import (
    GraphChangeItem,
    parse_graph,
    parse_graph_lifecycle,
)
from contactsync.schemas.messages import LifecycleEvent
from tests.emulators.graph_fixtures import (  # noqa: F401
    GraphEnv,
    Receiver,
    fast_options,
    graph_fixture,
    receiver_fixture,
)

FIXTURES = Path(__file__).parent / "graph"
GRAPH = "https://graph.microsoft.com/v1.0"
IMMUTABLE = {"Prefer": 'IdType="ImmutableId"'}


def fixture(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    assert doc["source"].startswith("learn.microsoft.com/graph/")  # every example names its page
    return doc


def documented_shape(documented: Any, actual: Any, where: str = "$") -> None:
    """Every property of the documented example is in the actual answer, recursively into
    objects and the first item of collections."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        if where != "$" and not actual:
            return  # an unset complex value ({} for an address) is a value, not a shape
        for key, value in documented.items():
            assert key in actual, f"{where}: documented property {key!r} missing"
            documented_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and isinstance(documented[0], dict):
        assert isinstance(actual, list) and actual, f"{where}: expected a non-empty collection"
        documented_shape(documented[0], actual[0], f"{where}[0]")


def test_every_fixture_names_its_page() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) >= 15
    for name in names:
        doc = fixture(name)
        assert doc["docs_repo"] == "microsoftgraph/microsoft-graph-docs-contrib"
        assert doc["docs_file"].endswith(".md")


# ---- the emulator answers like the documentation ----------------------------------------------


class Tenant:
    """A seeded mailbox and the documented requests mapped onto it."""

    def __init__(self, graph: GraphEnv) -> None:
        u = graph.emu.seed(users=1, contacts_per_user=3)["users"][0]
        self.graph = graph
        self.user, self.folder, self.contacts = u["id"], u["folderId"], u["contactIds"]
        self.http = httpx.Client(headers=IMMUTABLE)

    def url(self, documented: str, item: str = "") -> str:
        path = documented.removeprefix(GRAPH).replace("/me/", f"/users/{self.user}/")
        path = path.replace("/contactFolders/{id}", f"/contactFolders/{self.folder}")
        # The documented contact id (a placeholder or another tenant's) becomes one of ours.
        path = re.sub(r"/contacts/(?!delta)[^/?]+", "/contacts/{id}", path)
        return self.graph.api + path.replace("{id}", item or self.contacts[0])

    def send(self, name: str, *, body: Any = None, item: str = "") -> httpx.Response:
        req = fixture(name)["request"]
        return self.http.request(
            req["method"],
            self.url(req["url"], item),
            headers=req.get("headers") or {},
            json=body if body is not None else req.get("body"),
        )


@pytest.fixture(name="tenant")
def tenant_fixture(graph: GraphEnv) -> Iterator[Tenant]:
    t = Tenant(graph)
    try:
        yield t
    finally:
        t.http.close()


@pytest.mark.parametrize(
    "name", ["contact-get", "contacts-list", "contact-create", "contact-update",
             "contactfolders-list"]
)
def test_emulator_contact_operations_answer_as_documented(tenant: Tenant, name: str) -> None:
    expected = fixture(name)["response"]
    if name == "contactfolders-list":  # the documented answer lists one folder under Contacts
        resp = tenant.http.get(f"{tenant.graph.api}/users/{tenant.user}/contactFolders")
    else:
        resp = tenant.send(name)
    assert resp.status_code == expected["status"]
    documented_shape(expected["body"], resp.json())


def test_emulator_creates_a_folder_and_deletes_a_contact_as_documented(tenant: Tenant) -> None:
    doc = fixture("contactfolder-create")
    root = tenant.graph.emu.state.user(tenant.user).root_folder_id  # the placeholder parent
    created = tenant.send("contactfolder-create", body=doc["request"]["body"] | {
        "parentFolderId": root})
    assert created.status_code == doc["response"]["status"]
    documented_shape(doc["response"]["body"], created.json())
    gone = tenant.send("contact-delete", item=tenant.contacts[1])
    assert gone.status_code == fixture("contact-delete")["response"]["status"] and not gone.content


def test_emulator_delta_page_as_documented(tenant: Tenant) -> None:
    doc = fixture("contact-delta")
    resp = tenant.send("contact-delta")
    assert resp.status_code == doc["response"]["status"]
    page = resp.json()
    assert set(doc["response"]["body"]) <= set(page)  # the envelope: value and nextLink
    assert len(page["value"]) == 2
    assert all(set(c) >= {"id", "displayName"} for c in page["value"])


def test_emulator_batch_answers_in_the_documented_shape(tenant: Tenant) -> None:
    doc = fixture("json-batching")
    inner = [
        {"id": "1", "method": "GET", "url": f"/users/{tenant.user}/contacts/{tenant.contacts[0]}"},
        {"id": "2", "method": "DELETE", "url": f"/users/{tenant.user}/contacts/nope"},
    ]
    resp = tenant.http.post(tenant.graph.api + "/$batch", json={"requests": inner},
                            headers=doc["request"]["headers"])
    assert resp.status_code == doc["response"]["status"]
    answers = {r["id"]: r for r in resp.json()["responses"]}
    documented = {r["id"]: r for r in doc["response"]["body"]["responses"]}
    assert set(documented["5"]) <= set(answers["1"])  # id, status, headers, body
    assert answers["1"]["status"] == 200 and answers["2"]["status"] == 404
    documented_shape(documented["2"]["body"], answers["2"]["body"])  # the error object


def test_emulator_subscriptions_and_notifications_as_documented(
    tenant: Tenant, receiver: Receiver
) -> None:
    create, renew = fixture("subscription-create"), fixture("subscription-renew")
    body = create["request"]["body"] | {
        "notificationUrl": receiver.url + "/hook",
        "resource": f"users/{tenant.user}/contactFolders/{tenant.folder}/contacts",
        "expirationDateTime": (datetime.now(UTC) + timedelta(hours=2)).isoformat(),
        "changeType": "created,updated",
    }
    made = tenant.send("subscription-create", body=body)
    assert made.status_code == create["response"]["status"]
    # Graph's example echoes clientState; the emulator keeps it secret (null), as Graph does
    # for subscriptions it lists: the property is there either way.
    documented_shape(create["response"]["body"], made.json())
    sid = made.json()["id"]
    renewed = tenant.http.patch(f"{tenant.graph.api}/subscriptions/{sid}", json={
        "expirationDateTime": (datetime.now(UTC) + timedelta(hours=3)).isoformat()})
    assert renewed.status_code == renew["response"]["status"]
    documented_shape(renew["response"]["body"], renewed.json())
    tenant.graph.emu.person_update_contact(tenant.user, tenant.contacts[0], {"jobTitle": "X"})
    receiver.wait_for(lambda items: bool(items))
    documented_shape(fixture("change-notification")["request"]["body"]["value"][0],
                     receiver.received[0])
    deleted = tenant.http.delete(f"{tenant.graph.api}/subscriptions/{sid}")
    assert deleted.status_code == fixture("subscription-delete")["response"]["status"]


# ---- the product reads the documented answers ---------------------------------------------------


def test_client_maps_the_documented_batch_errors() -> None:
    responses = fixture("json-batching")["response"]["body"]["responses"]
    by_id = {r["id"]: r for r in responses}
    forbidden = graph_failure(status=by_id["2"]["status"], headers=by_id["2"]["headers"],
                              body=by_id["2"]["body"])
    assert isinstance(forbidden, Unauthorized) and "permissions" in str(forbidden)
    refused = graph_failure(status=by_id["4"]["status"], headers=by_id["4"]["headers"],
                            body=by_id["4"]["body"])
    assert isinstance(refused, Invalid) and refused.code == "Request_BadRequest"


def test_webhook_parses_the_documented_notifications() -> None:
    change = fixture("change-notification")["request"]["body"]
    [item] = parse_graph(json.dumps(change).encode()).value
    assert isinstance(item, GraphChangeItem)
    assert item.subscription_id == "{subscription_guid}" and item.change_type == "created"
    assert item.resource_data is not None and item.resource_data.id == "{long_id_string}"
    assert item.client_state == "secretClientValue"
    lifecycle = fixture("lifecycle-notification")["request"]["body"]
    [event] = parse_graph_lifecycle(json.dumps(lifecycle).encode()).value
    assert event.lifecycle_event is LifecycleEvent.REAUTHORIZATION_REQUIRED
    assert event.subscription_id == "e3898f08-5cd0-4a6a-80fc-6addbfb73b7b"


def test_keeper_reads_the_documented_expiration() -> None:
    for name in ("subscription-create", "subscription-renew"):
        entity = fixture(name)["response"]["body"]
        when = _expiry(entity, datetime.now(UTC))
        assert when.isoformat().startswith(entity["expirationDateTime"][:23])  # 7 digits read


@pytest.fixture(name="replay")
def replay_fixture() -> Iterator[str]:
    """A server answering the product's calls with the documented responses."""
    base: list[str] = []

    def answer(name: str) -> Response:
        expected = fixture(name)["response"]
        if expected["body"] is None:
            return Response(status_code=expected["status"])
        body = dict(expected["body"])
        for key in ("@odata.nextLink", "@odata.deltaLink"):  # links lead back here
            if key in body:
                body[key] = body[key].replace(GRAPH, base[0] + "/v1.0")
        return JSONResponse(body, status_code=expected["status"])

    async def contact(request: Request) -> Response:
        return answer({"GET": "contact-get", "PATCH": "contact-update",
                       "DELETE": "contact-delete"}[request.method])

    async def contacts(request: Request) -> Response:
        return answer("contact-create" if request.method == "POST" else "contacts-list")

    async def folders(request: Request) -> Response:
        return answer("contactfolder-create" if request.method == "POST" else "contactfolders-list")

    async def delta(request: Request) -> Response:
        if "$skiptoken" in request.query_params:  # the documented page ends no round: end it
            return JSONResponse({"value": [], "@odata.deltaLink": f"{base[0]}/v1.0/end"})
        return answer("contact-delta")

    async def subscriptions(request: Request) -> Response:
        return answer("subscription-create")

    async def subscription(request: Request) -> Response:
        return answer("subscription-renew" if request.method == "PATCH" else "subscription-delete")

    u = "/v1.0/users/{u}"
    app = Starlette(routes=[
        Route(u + "/contacts/{c}", contact, methods=["GET", "PATCH", "DELETE"]),
        Route(u + "/contactFolders/{f}/contacts/delta()", delta, methods=["GET"]),  # the SDK's
        Route("/v1.0/me/contactfolders/{f}/contacts/delta", delta, methods=["GET"]),  # nextLink
        Route(u + "/contactFolders/{f}/contacts", contacts, methods=["GET", "POST"]),
        Route(u + "/contactFolders", folders, methods=["GET", "POST"]),
        Route("/v1.0/subscriptions", subscriptions, methods=["POST"]),
        Route("/v1.0/subscriptions/{s}", subscription, methods=["PATCH", "DELETE"]),
    ])
    server = BackgroundServer(app).start()
    base.append(server.url)
    try:
        yield server.url + "/v1.0"
    finally:
        server.stop()


async def test_client_reads_the_documented_responses(replay: str) -> None:
    async with GraphClient.create(replay, options=fast_options()) as client:
        got = await client.get_contact("ann", "AAMk")
        assert got == fixture("contact-get")["response"]["body"] and bc_id_of(got) is None
        listed = await client.list_contacts("ann", "F")
        assert listed == fixture("contacts-list")["response"]["body"]["value"]
        updated = await client.update_contact("ann", "AAMk", {"jobTitle": "x"})
        assert updated["id"] == "AAMkAGI2THk0AAA="
        assert await client.delete_contact("ann", "AAMk") is True
        folders = await client.list_folders("ann")
        assert [f["displayName"] for f in folders] == ["Contacts"]
        changes = await client.delta("ann", "F")
        assert [c["displayName"] for c in changes.changed] == ["displayName-value"]
        created = await client.create_contact("ann", "F", "BC1", {"givenName": "Pavel"})
        assert created["displayName"] == "Pavel Bansky"
        sub = await client.create_subscription(
            "users/ann/contactFolders/F/contacts", "https://hooks.test/graph", None, "s",
            datetime.now(UTC) + timedelta(hours=1))
        assert sub["id"] == "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"
        renewed = await client.renew_subscription(sub["id"], datetime.now(UTC))
        assert renewed["changeType"] == "created,updated"
        assert await client.delete_subscription(sub["id"]) is True


def test_emulator_validation_handshake_as_documented(tenant: Tenant) -> None:
    """The handshake request is the documented one; only the URL-decoded token, in plain text,
    validates (an encoded echo fails and the subscription is refused)."""
    doc = fixture("validation-handshake")
    seen: list[tuple[str, str, str]] = []
    encode = [False]

    async def hook(request: Request) -> Response:
        token = request.query_params["validationToken"]  # decoded by the framework
        seen.append((request.method, request.headers["content-type"], token))
        raw = request.url.query.split("validationToken=", 1)[1]
        return Response(raw if encode[0] else token, media_type="text/plain")

    server = BackgroundServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])).start()
    body = {
        "changeType": "created", "notificationUrl": server.url + "/hook", "clientState": "s",
        "resource": f"users/{tenant.user}/contactFolders/{tenant.folder}/contacts",
        "expirationDateTime": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    try:
        made = tenant.http.post(tenant.graph.api + "/subscriptions", json=body)
        assert made.status_code == 201
        method, content_type, token = seen[0]
        assert method == doc["request"]["method"]
        assert content_type == doc["request"]["headers"]["Content-Type"]
        assert token and " " in token  # a readable token, sent URL-encoded
        encode[0] = True
        refused = tenant.http.post(tenant.graph.api + "/subscriptions", json=body)
        assert refused.status_code == 400
    finally:
        server.stop()
