"""The product's BC client against the BC emulator over real HTTP: construction and auth rules,
429 and 5xx recovery, the client-side budget, and creates that are not repeated blindly."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from contactsync.clients.bc import BcClient, error_from_response
from contactsync.clients.errors import (
    Conflict,
    Invalid,
    NotFound,
    ServiceUnavailable,
    Throttled,
    Unauthorized,
)
from contactsync.clients.resilience import BudgetLimits, RequestBudget, RetryPolicy
from contactsync.emulators.bc import BcEmulatorConfig
from tests.emulators.bc_fixtures import RunningBc, bc, bc_module, client, make_client, start_bc

__all__ = ["bc", "bc_module", "client"]


def reset_counters(bc: RunningBc) -> None:
    """Reset once earlier requests are counted (counting happens just after each answer)."""
    last = -1
    while (total := bc.emulator.counters_snapshot()["total"]) != last:
        last = total
        time.sleep(0.02)
    bc.emulator.reset_counters()


def statuses(bc: RunningBc, expect_total: int | None = None) -> dict[str, int]:
    """Status counts; the server records a request just after its answer is sent, so wait
    briefly for `expect_total` requests to be counted."""
    deadline = time.monotonic() + 2
    while True:
        snap = bc.emulator.counters_snapshot()
        if expect_total is None or snap["total"] >= expect_total or time.monotonic() > deadline:
            return dict(snap["by_status"])
        time.sleep(0.005)


class FakeCredential:
    """A stand-in azure-identity credential (sync protocol) issuing JWT-shaped tokens."""

    def __init__(self, lifetime: float = 3600) -> None:
        self.calls = 0
        self.lifetime = lifetime

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        assert scopes == ("https://api.businesscentral.dynamics.com/.default",)
        self.calls += 1
        payload = base64.urlsafe_b64encode(json.dumps({"oid": "svc-1"}).encode()).decode()
        return AccessToken(f"h.{payload.rstrip('=')}.s{self.calls}",
                           int(time.time() + self.lifetime))


async def test_credential_required_off_loopback() -> None:
    with pytest.raises(Unauthorized) as exc:
        await BcClient.create("https://api.businesscentral.dynamics.com/v2.0/production/api/v2.0",
                              "CRONUS USA, Inc.")
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        assert name in str(exc.value)


async def test_company_by_name_or_id(bc: RunningBc) -> None:
    by_name = await BcClient.create(bc.api, "CRONUS USA, Inc.", policy=RetryPolicy.fast())
    assert by_name.company_id == bc.emulator.company_id
    await by_name.aclose()
    by_id = await BcClient.create(bc.api, bc.emulator.company_id.upper())
    assert by_id.company_id == bc.emulator.company_id
    await by_id.aclose()
    with pytest.raises(NotFound, match="CRONUS"):
        await BcClient.create(bc.api, "Nope Ltd")


async def test_tokens_are_cached_and_refreshed(bc: RunningBc) -> None:
    cred = FakeCredential()
    c = await make_client(bc, credential=cred)
    await c.list_contacts()
    await c.list_contacts()
    assert cred.calls == 1
    await c.aclose()
    short = FakeCredential(lifetime=60)  # inside the refresh margin: a new token every call
    c = await make_client(bc, credential=short)
    await c.list_contacts()
    assert short.calls == 2
    await c.aclose()


async def test_429_with_retry_after_recovers(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.create_contact({"displayName": "A"})
    bc.emulator.inject_fault(kind="status", status=429, count=2, retry_after=1, route="contacts")
    reset_counters(bc)
    started = time.monotonic()
    rows = await client.list_contacts()
    elapsed = time.monotonic() - started
    assert len(rows) == 1
    assert statuses(bc, 3) == {"429": 2, "200": 1}
    assert elapsed >= 1.9  # Retry-After: 1 honoured twice

    impatient = await make_client(bc, policy=RetryPolicy(max_retry_after=5))
    bc.emulator.throttle_burst(30)  # longer than the policy will wait
    with pytest.raises(Throttled) as exc:
        await impatient.list_contacts()
    assert exc.value.retry_after >= 29
    await impatient.aclose()


async def test_server_throttle_per_principal_and_client_budget() -> None:
    running = start_bc(BcEmulatorConfig.for_tests(max_concurrent=2))
    try:
        running.emulator.seed(persons=5, companies=0)
        running.emulator.inject_fault(kind="latency", seconds=0.05, count=1000)
        # A client budget that matches the server's: no 429 at all.
        polite = await make_client(running, limits=BudgetLimits(2, 6000, 300))
        await asyncio.gather(*(polite.list_contacts() for _ in range(10)))
        assert "429" not in statuses(running, 11)
        await polite.aclose()
        # A client that ignores the limit meets 429s and still finishes (Retry-After: 1).
        greedy = await make_client(running, limits=BudgetLimits(10, 6000, 300),
                                   policy=RetryPolicy(max_attempts=10, base_delay=0.01))
        await asyncio.gather(*(greedy.list_contacts() for _ in range(6)))
        assert statuses(running).get("429", 0) >= 1
        await greedy.aclose()
    finally:
        running.server.stop()


async def test_request_window_budget_on_the_server() -> None:
    running = start_bc(BcEmulatorConfig.for_tests(max_requests=3, window_seconds=60))
    try:
        c = await make_client(running, policy=RetryPolicy(max_retry_after=1))
        for _ in range(2):  # create() used one request to resolve the company
            await c.list_contacts()
        with pytest.raises(Throttled) as exc:
            await c.list_contacts()
        assert exc.value.retry_after > 1
        # Another principal (a different token subject) has its own budget.
        other = await make_client(running, credential=FakeCredential())
        assert await other.list_contacts() == []
        await c.aclose()
        await other.aclose()
    finally:
        running.server.stop()


async def test_5xx_is_retried_then_surfaces(bc: RunningBc, client: BcClient) -> None:
    created = bc.emulator.create_contact({"displayName": "Z"})
    bc.emulator.inject_fault(kind="status", status=503, count=2, route="contacts")
    reset_counters(bc)
    assert (await client.get_contact(created["id"]))["displayName"] == "Z"
    assert statuses(bc, 3) == {"503": 2, "200": 1}
    bc.emulator.inject_fault(kind="status", status=500, count=10, route="contacts")
    short = await make_client(bc, policy=RetryPolicy.fast(max_attempts=3))
    with pytest.raises(ServiceUnavailable):
        await short.get_contact(created["id"])
    await short.aclose()
    bc.emulator.faults.clear()


async def test_ambiguous_create_failure_is_looked_up_not_repeated(bc: RunningBc) -> None:
    """The POST reaches BC and is applied, but the answer is lost (read timeout)."""
    lost: list[str] = []

    class LoseFirstPostAnswer(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.method == "POST" and not lost:
                await response.aread()
                lost.append(request.url.path)
                raise httpx.ReadTimeout("answer lost", request=request)
            return response

        async def aclose(self) -> None:
            await self.inner.aclose()

    http = httpx.AsyncClient(transport=LoseFirstPostAnswer())
    c = await make_client(bc, http=http)
    body = {"displayName": "Once Only", "type": "Person", "email": "once@contoso.example"}
    created = await c.create_contact(body)
    assert lost and created["email"] == "once@contoso.example"
    assert [x["id"] for x in bc.emulator.contacts()] == [created["id"]]
    await http.aclose()


async def test_create_applied_but_answered_504_is_found(bc: RunningBc, client: BcClient) -> None:
    """The emulator applies the POST and answers 504 (fault kind drop_response)."""
    bc.emulator.inject_fault(kind="drop_response", status=504, method="POST", route="contacts")
    created = await client.create_contact({"displayName": "Landed", "email": "l@x.example"})
    assert [x["id"] for x in bc.emulator.contacts()] == [created["id"]]
    assert created["displayName"] == "Landed"


async def test_create_not_applied_is_repeated_once(bc: RunningBc, client: BcClient) -> None:
    """A 503 before BC applied anything: the lookup finds nothing, so the POST is repeated."""
    bc.emulator.inject_fault(kind="status", status=503, count=1, method="POST")
    created = await client.create_contact({"displayName": "Retry", "email": "r@x.example"})
    assert [x["id"] for x in bc.emulator.contacts()] == [created["id"]]


async def test_update_after_lost_answer_is_recognised(bc: RunningBc) -> None:
    lost: list[bool] = []

    class LoseFirstPatchAnswer(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            if request.method in ("PATCH", "DELETE") and not lost:
                await response.aread()
                lost.append(True)
                raise httpx.RemoteProtocolError("connection dropped", request=request)
            return response

    contact = bc.emulator.create_contact({"displayName": "P"})
    http = httpx.AsyncClient(transport=LoseFirstPatchAnswer())
    c = await make_client(bc, http=http)
    updated = await c.update_contact(contact["id"], {"city": "Oslo"}, contact["@odata.etag"])
    assert updated["city"] == "Oslo" and lost == [True]
    lost.clear()
    await c.delete_contact(contact["id"], updated["@odata.etag"])
    assert lost == [True] and bc.emulator.contacts() == []
    await http.aclose()


async def test_iterator_and_errors(bc: RunningBc, client: BcClient) -> None:
    bc.emulator.seed(persons=45, companies=0)
    seen = [c["id"] async for page in client.iter_contact_pages(page_size=10) for c in page]
    assert len(seen) == len(set(seen)) == 45
    with pytest.raises(NotFound):
        await client.get_contact("00000000-0000-0000-0000-000000000001")
    with pytest.raises(Invalid):
        await client.list_contacts("city eq")


def test_error_mapping_is_one_function() -> None:
    body = json.dumps({"error": {"code": "Request_EntityChanged", "message": "changed"}})
    assert isinstance(error_from_response(412, body, {}), Conflict)
    assert isinstance(error_from_response(409, body, {}), Conflict)
    t = error_from_response(429, "", {"Retry-After": "7"})
    assert isinstance(t, Throttled) and t.retry_after == 7
    assert isinstance(error_from_response(504, "<html>", {}), ServiceUnavailable)
    assert isinstance(error_from_response(408, "", {}), ServiceUnavailable)
    assert isinstance(error_from_response(401, "", {}), Unauthorized)
    assert isinstance(error_from_response(403, "", {}), Unauthorized)
    assert isinstance(error_from_response(413, "", {}), Invalid)
    e = error_from_response(400, json.dumps({"error": {"code": "X", "message": "m"}}), {})
    assert isinstance(e, Invalid) and e.code == "X" and "m" in str(e)


async def test_no_token_in_logs(bc: RunningBc, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    cred = FakeCredential()
    c = await make_client(bc, credential=cred)
    await c.list_contacts()
    await c.aclose()
    assert ".s1" not in caplog.text and "Bearer" not in caplog.text


async def test_budget_shared_between_clients(bc: RunningBc) -> None:
    budget = RequestBudget(BudgetLimits(1, 6000, 300))
    a = await BcClient.create(bc.api, bc.emulator.company_id, budget=budget, principal="p")
    b = await BcClient.create(bc.api, bc.emulator.company_id, budget=budget, principal="p")
    bc.emulator.inject_fault(kind="latency", seconds=0.05, count=100)
    await asyncio.gather(*(x.list_contacts() for x in (a, b, a, b)))
    assert budget.in_window("p") == 6
    await a.aclose()
    await b.aclose()
    bc.emulator.faults.clear()
