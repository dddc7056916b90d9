"""The product's GraphClient (msgraph-sdk, anonymous auth) against the Graph emulator."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from contactsync.clients.bc import error_from_response
from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    RetryableError,
    SyncStateExpired,
    Unauthorized,
)
from contactsync.clients.graph import BC_ID_PROPERTY, ContactUpdate, GraphClient, bc_id_of
from contactsync.clients.graph_errors import graph_failure
from contactsync.clients.resilience import RetryPolicy, retry_delay
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


async def test_every_call_speaks_one_id_form(
    graph: GraphEnv, client: GraphClient, receiver: Receiver
) -> None:
    """Issue 12, defect 1: delta pages (first, next, delta link) and `$batch` creates carry
    `IdType="ImmutableId"` like every other call, so an id read one way matches the others."""
    uid = graph.emu.add_user("ids@contoso.test")["id"]
    folder = await client.find_or_create_folder(uid)
    sub = await client.create_subscription(
        f"users/{uid}/contactFolders/{folder}/contacts", receiver.url + "/hook", None, "ids",
        datetime.now(UTC) + timedelta(hours=1),
    )
    batch = await client.create_contacts(uid, folder, [(f"B{n}", _person(n)) for n in range(5)])
    single = await client.create_contact(uid, folder, "S", _person(9))
    created = {str(r.contact["id"]) for r in batch if r.contact} | {single["id"]}
    assert created == {c["id"] for c in graph.emu.contacts(uid, folder)}  # immutable form
    assert {c["id"] for c in await client.list_contacts(uid, folder)} == created
    client.options.delta_page_size = 2  # first page, nextLink follows, then the deltaLink
    first = await client.delta(uid, folder)
    assert {c["id"] for c in first.changed} == created
    moved, gone = sorted(created)[:2]
    await client.update_contact(uid, moved, {"jobTitle": "Lead"})
    await client.delete_contact(uid, gone)
    later = await client.delta(uid, folder, first.delta_link)
    assert [c["id"] for c in later.changed] == [moved] and later.removed == [gone]
    receiver.wait_for(lambda items: {i["resourceData"]["id"] for i in items} >= created)
    assert await client.delete_subscription(sub["id"])


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_expired_delta_token_is_known_by_its_code(
    graph: GraphEnv, client: GraphClient, status: int
) -> None:
    """Issue 12, defect 5: "a 40X-series error with syncStateNotFound", whatever the 40X."""
    u = graph.emu.seed(users=1, contacts_per_user=3)["users"][0]
    first = await client.delta(u["id"], u["folderId"])
    graph.emu.expire_delta_tokens(status=status)
    with pytest.raises(SyncStateExpired):
        await client.delta(u["id"], u["folderId"], first.delta_link)
    again = await client.delta(u["id"], u["folderId"])  # the fresh start works
    assert len(again.changed) == 3


@pytest.mark.parametrize("status", [424, 429])
async def test_whole_batch_failure_retries_without_duplicates(
    graph: GraphEnv, client: GraphClient, status: int
) -> None:
    """Issue 12, defect 6: Graph fails the whole `$batch` with 424 or 429; the creates are
    retried (after Retry-After), and those that had landed are found by their BC id first."""
    uid = graph.emu.add_user(f"batch{status}@contoso.test")["id"]
    folder = await client.find_or_create_folder(uid)
    graph.emu.add_fault(kind="status", status=status, count=1, route="/$batch", retry_after=1)
    results = await client.create_contacts(uid, folder, [(f"W{n}", _person(n)) for n in range(3)])
    assert all(r.ok for r in results)
    graph.emu.add_fault(kind="drop_response", status=status, count=1, route="/$batch")
    results = await client.create_contacts(
        uid, folder, [(f"X{n}", _person(n)) for n in range(3, 6)]
    )
    assert all(r.ok and r.existed for r in results)
    tags = sorted(next(iter(c["_ext"].values())) for c in graph.emu.contacts(uid, folder))
    assert tags == ["W0", "W1", "W2", "X3", "X4", "X5"]


async def test_throttled_inner_requests_are_retried_alone(
    graph: GraphEnv, client: GraphClient
) -> None:
    """Issue 12, defect 6: inner 429s carry their own Retry-After; only those creates go again,
    and each contact exists once."""
    uid = graph.emu.add_user("inner@contoso.test")["id"]
    folder = await client.find_or_create_folder(uid)
    graph.emu.add_fault(kind="status", status=429, count=2, method="POST", route="/contacts",
                        retry_after=1)
    results = await client.create_contacts(uid, folder, [(f"I{n}", _person(n)) for n in range(5)])
    assert all(r.ok and not r.existed for r in results)
    tags = sorted(next(iter(c["_ext"].values())) for c in graph.emu.contacts(uid, folder))
    assert tags == [f"I{n}" for n in range(5)]
    posts = graph.emu.counters_snapshot()["by_status"]
    assert posts["429"] == 2


PATCH_ONE = ("PATCH", "/v1.0/users/{u}/contacts/{c}")
BATCH = ("POST", "/v1.0/$batch")


async def _read_all(client: GraphClient, uid: str, ids: list[str]) -> list[dict[str, object]]:
    return [await client.get_contact(uid, cid) for cid in ids]


def _retitle(contacts: list[dict[str, object]], title: str) -> list[ContactUpdate]:
    """Each contact's PATCH as the executor sends it: If-Match its changeKey, tagged."""
    return [ContactUpdate(str(c["id"]), {"jobTitle": title}, str(c["changeKey"]), f"BC{n}")
            for n, c in enumerate(contacts)]


@pytest.mark.parametrize("stale_status", [412, 409])
async def test_bulk_updates_answer_each_item(
    graph: GraphEnv, client: GraphClient, stale_status: int
) -> None:
    """25 PATCHes in two `$batch`es (20 + 5), each with If-Match and the BC-id tag: one edited
    by a person since our read answers Conflict (412, or 409: both readings of Graph's stale
    changeKey), one deleted answers NotFound, the others land with their new changeKey, in the
    order given."""
    graph.emu.config.stale_change_key_status = stale_status
    u = graph.emu.seed(users=1, contacts_per_user=25)["users"][0]
    uid, ids = u["id"], u["contactIds"]
    read = await _read_all(client, uid, ids)
    graph.emu.person_update_contact(uid, ids[3], {"jobTitle": "Person's"})
    graph.emu.person_delete_contact(uid, ids[21])
    graph.emu.reset_counters()
    results = await client.update_contacts(uid, _retitle(read, "Bulk"))
    assert [r.graph_id for r in results] == [str(c["id"]) for c in read]
    stale = results[3].error
    assert isinstance(stale, Conflict) and stale.status == stale_status
    assert stale.code == "ErrorIrresolvableConflict"  # Graph's error body, read per item
    assert isinstance(results[21].error, NotFound)
    landed = [r for n, r in enumerate(results) if n not in (3, 21)]
    assert all(r.ok and r.contact and r.contact["jobTitle"] == "Bulk" for r in landed)
    assert all(r.contact and r.contact["changeKey"] != c["changeKey"]
               for r, c in zip(results, read, strict=False) if r.ok)
    assert _routes(graph)[BATCH] == 2 and _routes(graph)[PATCH_ONE] == 25  # all inside
    stored = {c["id"]: c for c in graph.emu.contacts(uid, u["folderId"])}
    assert stored[ids[3]]["jobTitle"] == "Person's", "the newer version was not overwritten"
    assert stored[ids[0]]["_ext"] == {BC_ID_PROPERTY: "BC0"}


@pytest.mark.parametrize("how", ["fault", "mailbox throttled"])
async def test_bulk_update_items_throttled_go_again(
    graph: GraphEnv, client: GraphClient, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Graph throttles each inner request (learn.microsoft.com/graph/throttling, "Throttling
    and batching"): the throttled PATCHes go again after their Retry-After, said in a retry
    line as a single request's retry is, and each lands."""
    u = graph.emu.seed(users=1, contacts_per_user=5)["users"][0]
    uid, ids = u["id"], u["contactIds"]
    read = await _read_all(client, uid, ids)
    graph.emu.reset_counters()
    if how == "fault":
        graph.emu.add_fault(kind="status", status=429, count=1, method="PATCH",
                            route="/contacts/", retry_after=1)
    else:
        graph.emu.throttle_storm(uid, 1)
    results = await client.update_contacts(uid, _retitle(read, "Again"))
    assert all(r.ok for r in results), [r.error for r in results]
    assert graph.emu.counters_snapshot()["by_status"]["429"] >= 1
    assert _routes(graph)[BATCH] == 2
    assert "Graph is throttling (HTTP 429), retry 1 of" in caplog.text
    assert {c["jobTitle"] for c in graph.emu.contacts(uid, u["folderId"])} == {"Again"}


@pytest.mark.parametrize(("kind", "status"), [
    ("status", 424), ("status", 429), ("status", 503), ("drop_response", 504)])
async def test_bulk_updates_after_a_whole_batch_failed(
    graph: GraphEnv, client: GraphClient, kind: str, status: int
) -> None:
    """A whole `$batch` that failed goes again for every item. One that had run (its answer
    lost) meets our own PATCHes: each answers Conflict, and the contact holds what we wrote."""
    u = graph.emu.seed(users=1, contacts_per_user=4)["users"][0]
    uid, ids = u["id"], u["contactIds"]
    read = await _read_all(client, uid, ids)
    graph.emu.add_fault(kind=kind, status=status, count=1, route="/$batch", retry_after=1)
    results = await client.update_contacts(uid, _retitle(read, "Whole"))
    if kind == "status":  # refused before any inner request ran
        assert all(r.ok for r in results), [r.error for r in results]
    else:
        assert all(isinstance(r.error, Conflict) for r in results)
    assert _routes(graph)[BATCH] == 2
    assert {c["jobTitle"] for c in graph.emu.contacts(uid, u["folderId"])} == {"Whole"}


def test_503_retry_after_is_honoured_like_429s() -> None:
    """Issue 12, defect 7: a 503's Retry-After sets the wait before the retry, as a 429's does
    (Graph's mapping; BC's shares `error_for_status`)."""
    policy = RetryPolicy(max_attempts=3, max_retry_after=60)
    for status in (429, 503):
        err = graph_failure(status=status, headers={"Retry-After": "7"}, body=None)
        assert isinstance(err, RetryableError)
        assert retry_delay(policy, 0, err, 0.0) == 7
        bc_err = error_from_response(status, b"", {"Retry-After": "7"})
        assert isinstance(bc_err, RetryableError)
        assert retry_delay(policy, 0, bc_err, 0.0) == 7
    assert retry_delay(policy, 0, graph_failure(status=503, body=None), 0.0) == 0.0  # backoff
