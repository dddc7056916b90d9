"""Conformance of the Graph emulator to Graph's documentation, driven with plain httpx."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from contactsync.emulators.graph.model import OUTPUT_ORDER
from tests.emulators.graph_fixtures import (  # noqa: F401
    GraphEnv,
    Receiver,
    graph_fixture,
    receiver_fixture,
)

# The emulator's helpers give immutable ids: these requests ask for that form too.
IMMUTABLE = {"Prefer": 'IdType="ImmutableId"'}
PROP = "String {0d671bb5-1436-455a-8a48-2f020ee6e0c2} Name BcContactId"


def _seed(graph: GraphEnv, n: int = 25) -> tuple[str, str, list[str]]:
    u = graph.emu.seed(users=1, contacts_per_user=n)["users"][0]
    return u["id"], u["folderId"], u["contactIds"]


def _error(resp: httpx.Response) -> str:
    body = resp.json()
    inner = body["error"]["innerError"]
    assert {"date", "request-id", "client-request-id"} <= inner.keys()
    return str(body["error"]["code"])


def test_users_by_id_and_upn(graph: GraphEnv) -> None:
    uid, _, _ = _seed(graph, 0)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        assert [u["id"] for u in c.get("/users").json()["value"]] == [uid]
        assert c.get("/users/USER0@contoso.test").json()["id"] == uid
        assert c.get(f"/users/{uid}").json()["userPrincipalName"] == "user0@contoso.test"
        r = c.get("/users/nobody@contoso.test")
        assert r.status_code == 404 and _error(r) == "ErrorInvalidUser"


def test_paging_to_the_end_with_absolute_next_links(graph: GraphEnv) -> None:
    uid, fid, ids = _seed(graph, 25)
    with httpx.Client(headers=IMMUTABLE) as c:
        url: str | None = f"{graph.api}/users/{uid}/contactFolders/{fid}/contacts"
        pages, seen = 0, []
        while url:
            body = c.get(url).json()
            pages += 1
            seen += [v["id"] for v in body["value"]]
            url = body.get("@odata.nextLink")
            assert url is None or (url.startswith(graph.url) and "$skip=" in url)
        assert pages == 3 and seen == ids  # default page size 10
        r = c.get(f"{graph.api}/users/{uid}/contactFolders/{fid}/contacts", params={"$top": 1000})
        assert len(r.json()["value"]) == 25 and "@odata.nextLink" not in r.json()
        bad = c.get(f"{graph.api}/users/{uid}/contactFolders/{fid}/contacts", params={"$top": 1001})
        assert bad.status_code == 400


def test_contact_shape_etag_and_change_key(graph: GraphEnv) -> None:
    uid, fid, _ = _seed(graph, 0)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        r = c.post(
            f"/users/{uid}/contactFolders/{fid}/contacts",
            json={
                "@odata.type": "#microsoft.graph.contact",
                "givenName": "Ada",
                "surname": "Lovelace",
                "emailAddresses": [{"name": "Ada", "address": "ada@example.test"}],
                "businessAddress": {"city": "London"},
                "birthday": "1815-12-10T00:00:00Z",
                "singleValueExtendedProperties": [{"id": PROP, "value": "CT1"}],
            },
        )
        assert r.status_code == 201
        c1 = r.json()
        assert set(OUTPUT_ORDER) <= c1.keys() and "singleValueExtendedProperties" not in c1
        assert c1["displayName"] == "Ada Lovelace" and c1["homePhones"] == []
        assert c1["homeAddress"] == {} and c1["parentFolderId"] == fid
        assert c1["@odata.etag"] == f'W/"{c1["changeKey"]}"'
        assert c1["changeKey"].startswith("EQAAABYAAA")
        g = c.get(f"/users/{uid}/contacts/{c1['id']}")
        assert g.headers["etag"] == c1["@odata.etag"] and "$entity" in g.json()["@odata.context"]
        p = c.patch(f"/users/{uid}/contacts/{c1['id']}", json={"jobTitle": "Countess"})
        assert p.status_code == 200 and p.json()["changeKey"] != c1["changeKey"]
        assert p.json()["givenName"] == "Ada"  # PATCH keeps what it does not send
        bad = c.post(f"/users/{uid}/contactFolders/{fid}/contacts", json={"nope": 1})
        assert bad.status_code == 400 and _error(bad) == "RequestBodyRead"
        assert c.delete(f"/users/{uid}/contacts/{c1['id']}").status_code == 204
        gone = c.get(f"/users/{uid}/contacts/{c1['id']}")
        assert gone.status_code == 404 and _error(gone) == "ErrorItemNotFound"


def test_filters_select_and_expand(graph: GraphEnv) -> None:
    uid, fid, _ = _seed(graph, 5)
    base = f"/users/{uid}/contactFolders/{fid}/contacts"
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        cid = c.post(
            base,
            json={
                "givenName": "T",
                "emailAddresses": [{"address": "T@x.test"}],
                "singleValueExtendedProperties": [{"id": PROP, "value": "CT9"}],
            },
        ).json()["id"]
        by_mail = c.get(base, params={"$filter": "emailAddresses/any(a:a/address eq 't@x.test')"})
        assert [v["id"] for v in by_mail.json()["value"]] == [cid]
        flt = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and ep/value eq 'ct9')"
        exp = f"singleValueExtendedProperties($filter=id eq '{PROP}')"
        r = c.get(base, params={"$filter": flt, "$expand": exp, "$select": "givenName"}).json()
        assert [v["id"] for v in r["value"]] == [cid]
        assert r["value"][0]["singleValueExtendedProperties"] == [{"id": PROP, "value": "CT9"}]
        assert set(r["value"][0]) == {
            "@odata.etag",
            "id",
            "givenName",
            "singleValueExtendedProperties",
        }
        # The Name part of the property id is case-sensitive.
        other = flt.replace("BcContactId", "bccontactid")
        assert c.get(base, params={"$filter": other}).json()["value"] == []
        assert c.get(base, params={"$filter": "givenName eq 'T'"}).status_code == 400


def test_delta_round_update_delete_and_expiry(graph: GraphEnv) -> None:
    uid, fid, ids = _seed(graph, 12)
    with httpx.Client(headers=IMMUTABLE) as c:
        url = f"{graph.api}/users/{uid}/contactFolders/{fid}/contacts/delta()"
        r = c.get(url, headers={"Prefer": 'odata.maxpagesize=5, IdType="ImmutableId"'})
        assert r.headers["preference-applied"] == "odata.maxpagesize=5"
        items, pages = [], 0
        while True:
            body = r.json()
            pages += 1
            items += body["value"]
            if "@odata.deltaLink" in body:
                delta_link = body["@odata.deltaLink"]
                break
            r = c.get(body["@odata.nextLink"])
        assert pages == 3 and sorted(i["id"] for i in items) == sorted(ids)
        assert all(i["@odata.type"] == "#microsoft.graph.contact" for i in items)
        empty = c.get(delta_link).json()
        assert empty["value"] == [] and "@odata.deltaLink" in empty
        graph.emu.person_update_contact(uid, ids[0], {"jobTitle": "Boss"})
        graph.emu.person_delete_contact(uid, ids[1])
        changes = c.get(delta_link).json()
        by_id = {v["id"]: v for v in changes["value"]}
        assert by_id[ids[0]]["jobTitle"] == "Boss"
        assert by_id[ids[1]] == {
            "@odata.type": "#microsoft.graph.contact",
            "id": ids[1],
            "@removed": {"reason": "deleted"},
        }
        assert graph.emu.expire_delta_tokens(user=uid) >= 1
        gone = c.get(changes["@odata.deltaLink"])
        assert gone.status_code == 410 and _error(gone) == "syncStateNotFound"
        # The path without parentheses works too.
        assert c.get(url.replace("delta()", "delta")).status_code == 200


def test_stale_if_match_gives_412(graph: GraphEnv) -> None:
    uid, _, ids = _seed(graph, 1)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        etag = c.get(f"/users/{uid}/contacts/{ids[0]}").json()["@odata.etag"]
        ok = c.patch(
            f"/users/{uid}/contacts/{ids[0]}", json={"title": "Dr"}, headers={"If-Match": etag}
        )
        assert ok.status_code == 200
        stale = c.patch(
            f"/users/{uid}/contacts/{ids[0]}", json={"title": "Mr"}, headers={"If-Match": etag}
        )
        assert stale.status_code == 412 and _error(stale) == "ErrorIrresolvableConflict"
        assert (
            c.delete(f"/users/{uid}/contacts/{ids[0]}", headers={"If-Match": etag}).status_code
            == 412
        )


async def test_concurrency_over_four_is_throttled(graph: GraphEnv) -> None:
    uid, fid, _ = _seed(graph, 1)
    graph.emu.add_fault(kind="latency", seconds=0.3, count=8, route="/contacts")
    async with httpx.AsyncClient(base_url=graph.api) as c:
        rs = await asyncio.gather(
            *(
                c.get(f"/users/user0@contoso.test/contactFolders/{fid}/contacts")
                if i % 2
                else c.get(f"/users/{uid}/contactFolders/{fid}/contacts")
                for i in range(8)
            )
        )
    throttled = [r for r in rs if r.status_code == 429]
    assert len(throttled) == 4 and sum(r.status_code == 200 for r in rs) == 4  # UPN == id
    assert throttled[0].headers["retry-after"] == "1"
    assert _error(throttled[0]) == "ApplicationThrottled"
    graph.emu.throttle_storm(uid, 2)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        r = c.get(f"/users/{uid}")
        assert r.status_code == 429 and _error(r) == "TooManyRequests"
        assert int(r.headers["retry-after"]) >= 1


def test_batch_limits_dependencies_and_counting(graph: GraphEnv) -> None:
    uid, fid, _ = _seed(graph, 0)
    graph.emu.reset_counters()
    url = f"/users/{uid}/contactFolders/{fid}/contacts"
    reqs = [
        {
            "id": str(i),
            "method": "POST",
            "url": url,
            "body": {"givenName": f"B{i}"},
            "headers": {"Content-Type": "application/json"},
        }
        for i in range(21)
    ]
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        too_many = c.post("/$batch", json={"requests": reqs})
        assert too_many.status_code == 400
        r = c.post("/$batch", json={"requests": reqs[:20]})
        assert r.status_code == 200
        assert sorted(int(x["id"]) for x in r.json()["responses"]) == list(range(20))
        assert {x["status"] for x in r.json()["responses"]} == {201}
        assert len(graph.emu.contacts(uid, fid)) == 20
        dep = c.post(
            "/$batch",
            json={
                "requests": [
                    {"id": "a", "method": "GET", "url": f"/users/{uid}/contacts/nope"},
                    {"id": "b", "method": "GET", "url": f"/users/{uid}", "dependsOn": ["a"]},
                    {
                        "id": "c",
                        "method": "GET",
                        "url": f"{graph.api}/users/{uid}",
                        "dependsOn": [],
                    },
                ]
            },
        ).json()["responses"]
        status = {x["id"]: x["status"] for x in dep}
        assert status == {"a": 404, "b": 424, "c": 200}
    counts = {
        (x["method"], x["route"]): x["count"] for x in graph.emu.counters_snapshot()["by_route"]
    }
    assert counts[("POST", "/v1.0/users/{u}/contactFolders/{f}/contacts")] == 20
    assert counts[("POST", "/v1.0/$batch")] == 3


def _sub_body(rec: Receiver, uid: str, fid: str, minutes: int = 60) -> dict[str, str]:
    return {
        "changeType": "created,updated,deleted",
        "notificationUrl": rec.url + "/hook",
        "lifecycleNotificationUrl": rec.url + "/lifecycle",
        "resource": f"users/{uid}/contactFolders/{fid}/contacts",
        "clientState": "s3cret",
        "expirationDateTime": (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(),
    }


def test_subscription_handshake_failure_and_lifetime(graph: GraphEnv, receiver: Receiver) -> None:
    uid, fid, _ = _seed(graph, 0)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        receiver.validate = False
        r = c.post("/subscriptions", json=_sub_body(receiver, uid, fid))
        assert r.status_code == 400 and _error(r) == "ValidationError"
        receiver.validate = True
        long = c.post("/subscriptions", json=_sub_body(receiver, uid, fid, minutes=5000))
        assert long.status_code == 400 and _error(long) == "ExtensionError"
        assert "4230 minutes" in long.json()["error"]["message"]
        sub = c.post("/subscriptions", json=_sub_body(receiver, uid, fid, minutes=10))
        assert sub.status_code == 201 and sub.json()["clientState"] is None
        exp = datetime.fromisoformat(sub.json()["expirationDateTime"].replace("Z", "+00:00"))
        assert exp > datetime.now(UTC) + timedelta(minutes=44)  # raised to the 45-minute minimum
        sid = sub.json()["id"]
        new_exp = (datetime.now(UTC) + timedelta(minutes=120)).isoformat()
        assert (
            c.patch(f"/subscriptions/{sid}", json={"expirationDateTime": new_exp}).status_code
            == 200
        )
        assert c.post(f"/subscriptions/{sid}/reauthorize").status_code == 204
        assert [s["id"] for s in c.get("/subscriptions").json()["value"]] == [sid]
        assert c.delete(f"/subscriptions/{sid}").status_code == 204
        assert c.get(f"/subscriptions/{sid}").status_code == 404
    assert receiver.validations >= 3


def test_notifications_delivered_retried_and_lifecycle(graph: GraphEnv, receiver: Receiver) -> None:
    uid, fid, _ = _seed(graph, 0)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        sid = c.post("/subscriptions", json=_sub_body(receiver, uid, fid)).json()["id"]
    created = graph.emu.person_create_contact(uid, fid, {"givenName": "N"})
    receiver.wait_for(lambda items: any(i.get("changeType") == "created" for i in items))
    note = next(i for i in receiver.received if i.get("changeType") == "created")
    assert note["clientState"] == "s3cret" and note["subscriptionId"] == sid
    assert note["resourceData"]["id"] == created["id"]
    assert note["resourceData"]["@odata.etag"] == f'W/"{created["changeKey"]}"'
    assert set(note) == {
        "id",
        "subscriptionId",
        "subscriptionExpirationDateTime",
        "changeType",
        "resource",
        "resourceData",
        "clientState",
        "tenantId",
    }
    # A failing receiver gets the notification again, with backoff.
    receiver.fail_next = 2
    graph.emu.person_update_contact(uid, created["id"], {"surname": "X"})
    receiver.wait_for(lambda items: any(i.get("changeType") == "updated" for i in items))
    assert graph.emu.notification_stats()["failed_attempts"] >= 2
    # Dropped and duplicated notifications.
    graph.emu.duplicate_notifications(1)
    graph.emu.person_delete_contact(uid, created["id"])
    receiver.wait_for(lambda items: sum(i.get("changeType") == "deleted" for i in items) == 2)
    # Lifecycle events go to the lifecycle URL; subscriptionRemoved removes it.
    assert graph.emu.send_lifecycle(sid, "reauthorizationRequired")
    receiver.wait_for(
        lambda items: any(i.get("lifecycleEvent") == "reauthorizationRequired" for i in items)
    )
    graph.emu.remove_subscription(sid, notify=True)
    receiver.wait_for(
        lambda items: any(i.get("lifecycleEvent") == "subscriptionRemoved" for i in items)
    )
    assert graph.emu.subscriptions() == []


def test_admin_http_api_seed_counters_snapshot(graph: GraphEnv, tmp_path: Path) -> None:
    with httpx.Client(base_url=graph.url, headers=IMMUTABLE) as c:
        seeded = c.post(
            "/_emulator/seed",
            json={"users": 2, "contacts_per_user": 3, "duplicates_by_email": 1, "without_email": 1},
        )
        users = seeded.json()["users"]
        assert len(users) == 2 and len(users[0]["contactIds"]) == 5
        u, f = users[0]["id"], users[0]["folderId"]
        made = c.post(f"/_emulator/users/{u}/contactFolders/{f}/contacts", json={"givenName": "P"})
        assert made.status_code == 200
        c.post("/_emulator/counters/reset")
        c.get(f"{graph.api}/users/{u}/contactFolders/{f}/contacts")
        counters = c.get("/_emulator/counters").json()
        assert counters["total"] == 1  # admin calls are not counted
        path = str(tmp_path / "snap.json")
        assert c.post("/_emulator/snapshot/save", json={"path": path}).status_code == 200
        c.post("/_emulator/reset")
        assert c.get(f"{graph.api}/users").json()["value"] == []
        c.post("/_emulator/snapshot/load", json={"path": path})
        listing = c.get(f"{graph.api}/users/{u}/contactFolders/{f}/contacts", params={"$top": 50})
        assert len(listing.json()["value"]) == 6
        c.post("/_emulator/faults", json={"kind": "status", "status": 503, "count": 1})
        assert c.get(f"{graph.api}/users/{u}").status_code == 503
        assert c.get(f"{graph.api}//users/{u}").status_code == 200  # `//` tolerated


def test_two_id_forms_per_request(graph: GraphEnv, receiver: Receiver) -> None:
    """Issue 12: a request with Prefer IdType="ImmutableId" sees immutable ids, one without it
    default ids (distinct strings), per request: delta and $batch inner requests included;
    either form names the item; notifications follow their subscription's creation."""
    uid, fid, [immutable] = _seed(graph, 1)
    with httpx.Client(base_url=graph.api) as rest, httpx.Client(
        base_url=graph.api, headers=IMMUTABLE
    ) as imm:
        plain = rest.get(f"/users/{uid}/contacts/{immutable}").json()["id"]
        assert plain != immutable
        assert imm.get(f"/users/{uid}/contacts/{plain}").json()["id"] == immutable
        listing = f"/users/{uid}/contactFolders/{fid}/contacts"
        assert [c["id"] for c in rest.get(listing).json()["value"]] == [plain]
        assert [c["id"] for c in imm.get(listing).json()["value"]] == [immutable]
        delta = imm.get(listing + "/delta", headers={"Prefer": "odata.maxpagesize=5"}).json()
        assert [c["id"] for c in delta["value"]] == [plain]  # that request had no IdType
        link = delta["@odata.deltaLink"]
        graph.emu.person_update_contact(uid, immutable, {"jobTitle": "Lead"})
        both = 'odata.maxpagesize=5, IdType="ImmutableId"'
        later = imm.get(link, headers={"Prefer": both}).json()  # links work with either form
        assert [c["id"] for c in later["value"]] == [immutable]
        inner = {"id": "1", "method": "GET", "url": f"/users/{uid}/contacts/{plain}"}
        batch = imm.post("/$batch", json={"requests": [
            inner, {**inner, "id": "2", "headers": IMMUTABLE}]}).json()["responses"]
        ids = {r["id"]: r["body"]["id"] for r in batch}
        assert ids == {"1": plain, "2": immutable}  # the batch's own Prefer is not inherited
        imm.post("/subscriptions", json=_sub_body(receiver, uid, fid))
        rest.post("/subscriptions", json=_sub_body(receiver, uid, fid))
    graph.emu.person_update_contact(uid, plain, {"jobTitle": "Head"})
    receiver.wait_for(lambda items: len(items) >= 2)
    assert sorted(i["resourceData"]["id"] for i in receiver.received) == sorted([plain, immutable])
    assert {i["resource"].rsplit("/", 1)[1] for i in receiver.received} == {plain, immutable}


def test_http_notification_url_is_refused_unless_allowed(receiver: Receiver) -> None:
    """Graph requires https for notificationUrl (400 InvalidRequest); the emulator allows http
    only when started with allow_http_notifications (the sandbox and tests)."""
    from contactsync.emulators.graph import GraphEmulator, GraphEmulatorConfig
    from contactsync.http_server import BackgroundServer

    strict = GraphEmulator(GraphEmulatorConfig())
    server = BackgroundServer(strict.app).start()
    try:
        u = strict.seed(users=1)["users"][0]
        with httpx.Client(base_url=server.url + "/v1.0") as c:
            r = c.post("/subscriptions", json=_sub_body(receiver, u["id"], u["folderId"]))
        assert r.status_code == 400 and _error(r) == "InvalidRequest"
        assert r.json()["error"]["message"] == "NotificationUrl scheme='http' is not supported."
        assert receiver.validations == 0  # refused before any handshake
    finally:
        server.stop()


def test_expired_delta_and_whole_batch_faults(graph: GraphEnv) -> None:
    """Expired delta state: 410 syncStateNotFound by default, 400/404 with the same code when
    injected; a whole $batch can be failed with 424 or 429 (Retry-After)."""
    uid, fid, _ = _seed(graph, 2)
    with httpx.Client(base_url=graph.api, headers=IMMUTABLE) as c:
        link = c.get(f"/users/{uid}/contactFolders/{fid}/contacts/delta").json()[
            "@odata.deltaLink"
        ]
        graph.emu.expire_delta_tokens()
        r = c.get(link)
        assert r.status_code == 410 and _error(r) == "syncStateNotFound"
        for status in (400, 404):
            assert c.post(
                graph.url + "/_emulator/delta/expire", json={"status": status}
            ).status_code == 200
            r = c.get(link)
            assert r.status_code == status and _error(r) == "syncStateNotFound"
        assert c.post(graph.url + "/_emulator/delta/expire", json={"status": 500}).status_code \
            == 400
        inner = {"requests": [{"id": "1", "method": "GET", "url": f"/users/{uid}"}]}
        graph.emu.add_fault(kind="status", status=424, route="/$batch")
        r = c.post("/$batch", json=inner)
        assert r.status_code == 424 and _error(r) == "FailedDependency"
        graph.emu.add_fault(kind="status", status=429, route="/$batch", retry_after=3)
        r = c.post("/$batch", json=inner)
        assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert c.post("/$batch", json=inner).status_code == 200
