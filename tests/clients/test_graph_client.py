"""The product's GraphClient (msgraph-sdk, anonymous auth) against the Graph emulator."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    SyncStateExpired,
    Unauthorized,
)
from contactsync.clients.graph import BC_ID_PROPERTY, GraphClient, bc_id_of
from tests.emulators.graph_fixtures import (  # noqa: F401
    GraphEnv,
    Receiver,
    client_fixture,
    fast_options,
    graph_fixture,
    receiver_fixture,
)


def _person(n: int) -> dict[str, object]:
    return {
        "givenName": f"P{n}",
        "surname": "Test",
        "displayName": f"P{n} Test",
        "emailAddresses": [{"name": f"P{n}", "address": f"p{n}@example.test"}],
    }


def _routes(graph: GraphEnv) -> dict[tuple[str, str], int]:
    snap = graph.emu.counters_snapshot()
    return {(x["method"], x["route"]): x["count"] for x in snap["by_route"]}


def test_create_requires_credentials_off_loopback() -> None:
    with pytest.raises(Unauthorized, match="AZURE_TENANT_ID"):
        GraphClient.create("https://graph.microsoft.com/v1.0")
    GraphClient.create("http://localhost:1/v1.0/")  # loopback: anonymous is fine


async def test_folder_bulk_create_list_and_lookup(graph: GraphEnv, client: GraphClient) -> None:
    user = graph.emu.add_user("ann@contoso.test")["id"]
    folder = await client.find_or_create_folder("ann@contoso.test")
    assert await client.find_or_create_folder(user, "business central") == folder
    todo = [(f"CT{n}", _person(n)) for n in range(45)]
    results = await client.create_contacts(user, folder, todo)
    assert all(r.ok and not r.existed for r in results)
    assert _routes(graph)[("POST", "/v1.0/$batch")] == 3  # 20 + 20 + 5
    listed = await client.list_contacts(user, folder)
    assert len(listed) == 45 and {bc_id_of(c) for c in listed} == {f"CT{n}" for n in range(45)}
    found = await client.find_by_bc_id(user, folder, "ct7")  # values match case-insensitively
    assert found is not None and found["givenName"] == "P7"
    assert await client.find_by_bc_id(user, folder, "CT999") is None
    by_mail = await client.find_by_email(user, folder, " P8@Example.test ")
    assert [c["givenName"] for c in by_mail] == ["P8"]
    one = await client.get_contact(user, found["id"])
    assert bc_id_of(one) == "CT7"
    stored = graph.emu.contacts(user, folder)[0]["_ext"]
    assert list(stored) == [BC_ID_PROPERTY]


async def test_delta_update_delete_and_expiry(graph: GraphEnv, client: GraphClient) -> None:
    u = graph.emu.seed(users=1, contacts_per_user=15)["users"][0]
    uid, fid, ids = u["id"], u["folderId"], u["contactIds"]
    client.options.delta_page_size = 4
    first = await client.delta(uid, fid, None)
    assert sorted(c["id"] for c in first.changed) == sorted(ids) and first.removed == []
    graph.emu.person_update_contact(uid, ids[0], {"jobTitle": "Chief"})
    graph.emu.person_delete_contact(uid, ids[1])
    second = await client.delta(uid, fid, first.delta_link)
    assert [c["jobTitle"] for c in second.changed] == ["Chief"] and second.removed == [ids[1]]
    graph.emu.expire_delta_tokens()
    with pytest.raises(SyncStateExpired):
        await client.delta(uid, fid, second.delta_link)


async def test_if_match_and_idempotent_delete(graph: GraphEnv, client: GraphClient) -> None:
    u = graph.emu.seed(users=1, contacts_per_user=1)["users"][0]
    uid, cid = u["id"], u["contactIds"][0]
    current = await client.get_contact(uid, cid)
    updated = await client.update_contact(
        uid, cid, {"jobTitle": "A"}, if_match=current["changeKey"], bc_id="CT1"
    )
    assert updated["changeKey"] != current["changeKey"]
    with pytest.raises(Conflict):
        await client.update_contact(uid, cid, {"jobTitle": "B"}, if_match=current["@odata.etag"])
    assert await client.delete_contact(uid, cid) is True
    assert await client.delete_contact(uid, cid) is False
    with pytest.raises(NotFound):
        await client.get_contact(uid, cid)


async def test_recovers_from_429_and_5xx(graph: GraphEnv, client: GraphClient) -> None:
    u = graph.emu.seed(users=1, contacts_per_user=1)["users"][0]
    uid, cid = u["id"], u["contactIds"][0]
    graph.emu.throttle_storm(uid, 1)
    t0 = time.monotonic()
    assert (await client.get_contact(uid, cid))["id"] == cid
    assert time.monotonic() - t0 >= 0.9  # waited out Retry-After: 1
    graph.emu.add_fault(kind="status", status=503, count=2, route="/contacts/")
    assert (await client.get_contact(uid, cid))["id"] == cid
    statuses = graph.emu.counters_snapshot()["by_status"]
    assert statuses["429"] >= 1 and statuses["503"] == 2


async def test_client_budget_keeps_under_concurrency_limit(graph: GraphEnv) -> None:
    u = graph.emu.seed(users=1, contacts_per_user=1)["users"][0]
    graph.emu.add_fault(kind="latency", seconds=0.2, count=10, route="/contacts/")
    async with GraphClient.create(graph.api, options=fast_options()) as c:
        await asyncio.gather(*(c.get_contact(u["id"], u["contactIds"][0]) for _ in range(10)))
    assert "429" not in graph.emu.counters_snapshot()["by_status"]


async def test_lost_create_responses_are_not_duplicated(
    graph: GraphEnv, client: GraphClient
) -> None:
    uid = graph.emu.add_user("lost@contoso.test")["id"]
    folder = await client.find_or_create_folder(uid)
    # One inner create lands but its answer is lost (504).
    graph.emu.add_fault(kind="drop_response", status=504, count=1, method="POST", route="/contacts")
    results = await client.create_contacts(uid, folder, [(f"L{n}", _person(n)) for n in range(3)])
    assert all(r.ok for r in results) and sum(r.existed for r in results) == 1
    # The whole $batch answer is lost after every create landed.
    graph.emu.add_fault(kind="drop_response", status=504, count=1, route="/$batch")
    results = await client.create_contacts(
        uid, folder, [(f"M{n}", _person(n)) for n in range(3, 8)]
    )
    assert all(r.ok and r.existed for r in results)
    # A single create whose answer is lost.
    graph.emu.add_fault(kind="drop_response", status=502, count=1, method="POST", route="/contacts")
    single = await client.create_contact(uid, folder, "S1", _person(99))
    assert bc_id_of(single) == "S1"
    tags = [next(iter(c["_ext"].values())) for c in graph.emu.contacts(uid, folder)]
    assert sorted(tags) == sorted(
        [f"L{n}" for n in range(3)] + [f"M{n}" for n in range(3, 8)] + ["S1"]
    )


async def test_batch_item_failures_are_per_item(graph: GraphEnv, client: GraphClient) -> None:
    uid = graph.emu.add_user("items@contoso.test")["id"]
    folder = await client.find_or_create_folder(uid)
    bad = {"givenName": "Bad", "notAProperty": True}
    results = await client.create_contacts(uid, folder, [("A", _person(1)), ("B", bad)])
    assert results[0].ok and results[1].error is not None and results[1].error.status == 400


async def test_subscription_lifecycle(
    graph: GraphEnv, client: GraphClient, receiver: Receiver
) -> None:
    u = graph.emu.seed(users=1, contacts_per_user=0)["users"][0]
    resource = f"users/{u['id']}/contactFolders/{u['folderId']}/contacts"
    far = datetime.now(UTC) + timedelta(days=6)  # over 4230 minutes: retried within the limit
    sub = await client.create_subscription(
        resource, receiver.url + "/hook", receiver.url + "/lifecycle", "state-1", far
    )
    exp = datetime.fromisoformat(sub["expirationDateTime"].replace("Z", "+00:00"))
    assert exp < datetime.now(UTC) + timedelta(minutes=4230)
    renewed = await client.renew_subscription(sub["id"], datetime.now(UTC) + timedelta(hours=2))
    assert renewed["id"] == sub["id"]
    await client.reauthorize_subscription(sub["id"])
    assert [s["id"] for s in await client.list_subscriptions()] == [sub["id"]]
    graph.emu.person_create_contact(u["id"], u["folderId"], {"givenName": "Hook"})
    receiver.wait_for(lambda items: any(i.get("clientState") == "state-1" for i in items))
    assert await client.delete_subscription(sub["id"]) is True
    assert await client.delete_subscription(sub["id"]) is False
    receiver.validate = False
    with pytest.raises(Invalid):
        await client.create_subscription(
            resource, receiver.url + "/hook", None, "s", datetime.now(UTC) + timedelta(hours=1)
        )
