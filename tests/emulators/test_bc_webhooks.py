"""BC webhooks (reference c.4): handshake, batched notifications to a real receiver, collection
notifications, retries on 408/429/5xx, deletion on other errors, renewal with If-Match."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contactsync.clients.bc import BcClient, parse_bc_datetime
from contactsync.clients.errors import Invalid
from tests.emulators.bc_fixtures import Receiver, RunningBc, bc, bc_module, client, receiver

__all__ = ["bc", "bc_module", "client", "receiver"]


def read_resource(client: BcClient, resource: str) -> Any:
    """GET a notification's `resource` (relative to the environment's root), as BC's
    documentation has a subscriber do."""
    root = client.base_url[: client.base_url.rfind("/api/v2.0")]
    return httpx.get(f"{root}/{resource.lstrip('/')}", timeout=10).json()


@pytest.mark.parametrize("answer", ["wrong", 404, 500])
async def test_failed_handshake_creates_nothing(
    bc: RunningBc, client: BcClient, receiver: Receiver, answer: str | int
) -> None:
    receiver.handshake = answer
    with pytest.raises(Invalid) as exc:
        await client.create_subscription(receiver.url, "secret")
    assert exc.value.status == 400
    assert len(receiver.validations) == 1
    assert await client.list_subscriptions() == []


async def test_handshake_to_nowhere(bc: RunningBc, client: BcClient) -> None:
    with pytest.raises(Invalid):
        await client.create_subscription("http://127.0.0.1:9/hook", "s")


async def test_batched_notifications_with_client_state(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    bc.emulator.config.notification_delay_seconds = 0.3
    sub = await client.create_subscription(receiver.url, "s3cret")
    assert receiver.validations and sub["clientState"] == "s3cret"
    expiry = parse_bc_datetime(sub["expirationDateTime"])
    assert abs(expiry - (datetime.now(UTC) + timedelta(days=3))) < timedelta(minutes=1)
    assert [s["subscriptionId"] for s in await client.list_subscriptions()] == [
        sub["subscriptionId"]
    ]

    emu = bc.emulator
    a = emu.create_contact({"displayName": "A", "type": "Person", "email": "a@x.example"})
    b = emu.create_contact({"displayName": "B", "type": "Person"})
    emu.update_contact(a["id"], {"city": "Oslo"})
    emu.update_contact(a["id"], {"city": "Rome"})  # several edits -> one item
    old = emu.create_contact({"displayName": "Old"})
    receiver.wait_for(lambda r: len(r.batches) >= 1)
    emu.delete_contact(old["id"])
    emu.update_contact(b["id"], {"city": "Paris"})
    receiver.wait_for(lambda r: len(r.batches) >= 2)

    first, second = receiver.batches[0]["value"], receiver.batches[1]["value"]
    assert {(i["resource"].rsplit("(", 1)[1].rstrip(")"), i["changeType"]) for i in first} == {
        (a["id"], "created"), (b["id"], "created"), (old["id"], "created")}
    assert {(i["resource"].rsplit("(", 1)[1].rstrip(")"), i["changeType"]) for i in second} == {
        (old["id"], "deleted"), (b["id"], "updated")}
    for item in first + second:
        assert set(item) == {"subscriptionId", "clientState", "expirationDateTime", "resource",
                             "changeType", "lastModifiedDateTime"}
        assert item["clientState"] == "s3cret"
        assert item["subscriptionId"] == sub["subscriptionId"]
        assert item["resource"].startswith(f"api/v2.0/companies({emu.company_id})/contacts(")

    # A notification is a hint: the client reads the resource it names.
    item = next(i for i in first if a["id"] in i["resource"])
    assert read_resource(client, item["resource"])["city"] == "Rome"


async def test_collection_notification_over_threshold(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    bc.emulator.config.max_notifications = 5
    bc.emulator.config.notification_delay_seconds = 0.3
    bc.emulator.seed(persons=20, companies=0)
    await client.create_subscription(receiver.url, "c")
    before = bc.emulator.contacts()
    time.sleep(0.1)  # the collection filter reaches 50 ms before the first change
    for c in before[:8]:
        bc.emulator.update_contact(c["id"], {"jobTitle": "Changed"})
    receiver.wait_for(lambda r: len(r.batches) >= 1)
    items = receiver.items()
    assert len(items) == 1 and items[0]["changeType"] == "collection"
    assert "?$filter=lastModifiedDateTime%20gt%20" in items[0]["resource"]
    page = read_resource(client, items[0]["resource"])
    assert {c["id"] for c in page["value"]} == {c["id"] for c in before[:8]}


async def test_retry_on_503_then_delivered(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    receiver.statuses = [503, 429, 408]
    sub = await client.create_subscription(receiver.url, "r")
    bc.emulator.create_contact({"displayName": "Retry me"})
    receiver.wait_for(lambda r: len(r.batches) == 1)
    assert receiver.answered == [503, 429, 408, 202]
    assert [s["subscriptionId"] for s in await client.list_subscriptions()] == [
        sub["subscriptionId"]]
    attempts = [h["attempt"] for h in bc.emulator.hub.history]
    assert attempts == [0, 1, 2, 3]


async def test_subscription_deleted_after_404_or_too_many_failures(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    receiver.statuses = [404]
    await client.create_subscription(receiver.url, "gone")
    bc.emulator.create_contact({"displayName": "X"})
    receiver.wait_for(lambda r: r.answered == [404])
    deadline = time.monotonic() + 2
    while await client.list_subscriptions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert await client.list_subscriptions() == []

    receiver.statuses = [500] * 5
    await client.create_subscription(receiver.url, "flaky")
    bc.emulator.create_contact({"displayName": "Y"})
    receiver.wait_for(lambda r: len(r.answered) == 6)
    time.sleep(0.05)
    assert await client.list_subscriptions() == []


async def test_renew_and_delete_need_if_match(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    sub = await client.create_subscription(receiver.url, "x")
    sid = sub["subscriptionId"]
    async with httpx.AsyncClient() as http:
        r = await http.patch(f"{bc.api}/subscriptions('{sid}')", json={})
        assert r.status_code == 400
        r = await http.delete(f"{bc.api}/subscriptions('{sid}')")
        assert r.status_code == 400
    time.sleep(0.01)
    renewed = await _renew(client, sub)
    assert len(receiver.validations) == 2  # the handshake runs again on renewal
    assert renewed["expirationDateTime"] >= sub["expirationDateTime"]
    assert renewed["@odata.etag"] != sub["@odata.etag"]
    receiver.handshake = 500
    with pytest.raises(Invalid):
        await _renew(client, renewed)
    await client.delete_subscription(sid, renewed["@odata.etag"])
    assert await client.list_subscriptions() == []


async def _renew(client: BcClient, sub: dict[str, Any]) -> dict[str, Any]:
    return await client.renew_subscription(
        sub["subscriptionId"], sub["@odata.etag"], notification_url=sub["notificationUrl"],
        resource=sub["resource"], client_state=sub["clientState"])


@pytest.mark.parametrize("strict", [True, False])
async def test_a_renewal_without_the_subscription_body(
    bc: RunningBc, client: BcClient, receiver: Receiver, strict: bool
) -> None:
    """"Update subscriptions" shows the renewal PATCH carrying notificationUrl, resource and
    clientState; what BC does with `{}` is undocumented: strict refuses it, lax keeps the
    stored values. The client's renewal passes either way."""
    bc.emulator.config.strict_renewal_body = strict
    sub = await client.create_subscription(receiver.url, "state")
    async with httpx.AsyncClient() as http:
        r = await http.patch(f"{bc.api}/subscriptions('{sub['subscriptionId']}')", json={},
                             headers={"If-Match": sub["@odata.etag"]})
    assert r.status_code == (400 if strict else 200)
    if strict:
        assert r.json()["error"]["code"] == "BadRequest_RequiredParamNotProvided"
    current = (await client.list_subscriptions())[0]
    renewed = await _renew(client, current)
    assert renewed["clientState"] == "state" and renewed["notificationUrl"] == receiver.url


async def test_dropped_and_duplicated_notifications(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    await client.create_subscription(receiver.url, "f")
    bc.emulator.notification_faults(drop=1)
    bc.emulator.create_contact({"displayName": "Lost"})
    time.sleep(0.3)
    assert receiver.batches == []
    bc.emulator.notification_faults(duplicate=1)
    bc.emulator.create_contact({"displayName": "Twice"})
    receiver.wait_for(lambda r: len(r.batches) == 2)
    assert receiver.batches[0] == receiver.batches[1]


async def test_webhook_supported_resources_on_and_off(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    assert await client.webhook_supported() is True
    bc.emulator.set_webhooks_supported(False)
    assert await client.webhook_supported() is False
    with pytest.raises(Invalid):
        await client.create_subscription(receiver.url, "no")
    async with httpx.AsyncClient() as http:
        await http.put(f"{bc.url}/_emulator/webhooks", json={"supported": True})
    assert await client.webhook_supported() is True


async def test_no_changes_recorded_without_subscription(
    bc: RunningBc, client: BcClient, receiver: Receiver
) -> None:
    bc.emulator.create_contact({"displayName": "Before"})
    await client.create_subscription(receiver.url, "late")
    time.sleep(0.2)
    assert receiver.batches == []
