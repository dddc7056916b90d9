"""Graph's `$batch`: creates and updates of contacts, 20 per request.

Graph runs up to 4 inner requests of a batch at once against the mailbox and throttles each
inner request, so a batch holds that many of the mailbox's concurrency slots and charges the
rest to its request window. Inner requests that fail with a retryable answer (429, 5xx, no
answer) go again in the next batch, after the longest Retry-After; a whole `$batch` that fails
(424, 429, 5xx, a lost answer) goes again for every item.

A create is never made twice: an item whose create may have landed is looked up by its BC id
before it is tried again. An update is a PATCH with If-Match, safe to send again: one that had
landed answers 412 (Conflict), which callers treat as "re-read and re-plan" as for a single
PATCH (contacts.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from kiota_abstractions.method import Method

from contactsync.clients.errors import (
    RetryableError,
    ServiceError,
    ServiceUnavailable,
    server_retry_after,
)
from contactsync.clients.graph.contacts import (
    ContactsApi,
    if_match_header,
    update_body,
    with_bc_id,
)
from contactsync.clients.graph.transport import Json, prefer_header
from contactsync.clients.graph_errors import SERVICE, graph_failure
from contactsync.clients.resilience import (
    default_is_ambiguous,
    retry_delay,
    retry_line,
    retry_log,
)

BATCH_LIMIT = 20


@dataclass
class BatchResult:
    contact: Json | None = None  # the contact the item's request answered
    error: ServiceError | None = None  # or the failure it ended with

    @property
    def ok(self) -> bool:
        return self.error is None and self.contact is not None


@dataclass
class CreateResult(BatchResult):
    bc_id: str = ""
    existed: bool = False  # found by BC id after an ambiguous failure, not created again


@dataclass
class UpdateResult(BatchResult):
    graph_id: str = ""


class ContactUpdate(NamedTuple):
    """One PATCH of `update_contacts`, as `update_contact` takes it."""

    graph_id: str
    fields: Mapping[str, Any]
    if_match: str | None = None
    bc_id: str | None = None


# Settles an item that may have landed before it goes again: True if it needs no new request.
Recheck = Callable[[int], Awaitable[bool]]


class BatchApi(ContactsApi):
    async def create_contacts(
        self, mailbox: str, folder_id: str, contacts: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[CreateResult]:
        """Create contacts given as (bc_id, fields) through `$batch`, 20 per request.

        Returns one result per input, in order. An item whose create may have landed (5xx,
        timeout, a lost batch response) is looked up by its BC id before it is tried again.
        """
        results = [CreateResult(bc_id=bc_id) for bc_id, _ in contacts]
        url = self._folder_contacts(mailbox, folder_id)
        headers = self._inner_headers()

        def request(i: int) -> Json:
            bc_id, fields = contacts[i]
            return {"id": str(i), "method": "POST", "url": url, "headers": headers,
                    "body": with_bc_id(fields, bc_id)}

        async def found(i: int) -> bool:  # may have landed: look before creating again
            contact = await self.find_by_bc_id(mailbox, folder_id, contacts[i][0])
            if contact is None:
                return False
            results[i].contact, results[i].existed = contact, True
            return True

        await self._in_chunks(mailbox, results, request, found)
        return results

    async def update_contacts(
        self, mailbox: str, updates: Sequence[ContactUpdate]
    ) -> list[UpdateResult]:
        """PATCH contacts through `$batch`, 20 per request, each as `update_contact` would:
        the same body (tagged with the BC id) and If-Match. One result per input, in order:
        the updated contact, or the error (Conflict for a newer version, NotFound, ...)."""
        results = [UpdateResult(graph_id=u.graph_id) for u in updates]

        def request(i: int) -> Json:
            update = updates[i]
            headers = self._inner_headers()
            if update.if_match:
                headers["If-Match"] = if_match_header(update.if_match)
            return {"id": str(i), "method": "PATCH",
                    "url": self._contact(mailbox, update.graph_id), "headers": headers,
                    "body": update_body(update.fields, update.bc_id)}

        await self._in_chunks(mailbox, results, request, None)
        return results

    def _inner_headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        prefer = prefer_header(immutable_ids=self.options.immutable_ids)
        if prefer:  # per inner request: Graph does not carry the batch's own Prefer over
            headers["Prefer"] = prefer
        return headers

    async def _in_chunks(
        self,
        mailbox: str,
        results: Sequence[BatchResult],
        request: Callable[[int], Json],
        recheck: Recheck | None,
    ) -> None:
        for start in range(0, len(results), BATCH_LIMIT):
            pending = list(range(start, min(start + BATCH_LIMIT, len(results))))
            await self._until_settled(mailbox, results, pending, request, recheck)

    async def _until_settled(
        self,
        mailbox: str,
        results: Sequence[BatchResult],
        pending: list[int],
        request: Callable[[int], Json],
        recheck: Recheck | None,
    ) -> None:
        """Send the pending items as one `$batch` until each has an answer or a final error;
        items that may have landed are given to `recheck` first (creates: look up)."""
        maybe_landed: set[int] = set()
        retry_number = 0
        while pending:
            if recheck is not None:
                for i in sorted(maybe_landed):
                    if await recheck(i):
                        pending.remove(i)
            if not pending:
                return
            failures, whole_batch_failed = await self._one_round(
                mailbox, results, pending, request)
            if not failures:
                return
            # Each failed item may carry its own Retry-After: wait for the longest one.
            worst = max(failures.values(), key=lambda e: server_retry_after(e) or 0.0)
            delay = retry_delay(self.options.policy, retry_number, worst, self._rng.random())
            if delay is None:
                for i, failed in failures.items():
                    results[i].error = failed
                return
            # As the single-request path reports a retry (resilience.retrying): never silent.
            retry_log.warning(retry_line(
                retry_number + 1, self.options.policy.max_attempts - 1, worst, delay))
            retry_after = server_retry_after(worst)
            if retry_after:
                self._budget.pause(mailbox, float(retry_after))
            await asyncio.sleep(delay)
            retry_number += 1
            pending = sorted(failures)
            # After a whole-batch failure no item says whether it ran.
            maybe_landed = {i for i, failed in failures.items()
                            if whole_batch_failed or default_is_ambiguous(failed)}

    async def _one_round(
        self,
        mailbox: str,
        results: Sequence[BatchResult],
        pending: list[int],
        request: Callable[[int], Json],
    ) -> tuple[dict[int, RetryableError], bool]:
        """One `$batch` of the pending items: settles the answered ones in `results` and
        returns the retryable failures, and whether the whole batch failed."""
        try:
            answers = await self._batch(mailbox, [request(i) for i in pending])
        except RetryableError as err:  # the whole batch: 424, 429, 5xx, lost answer
            return dict.fromkeys(pending, err), True
        except ServiceError as err:
            for i in pending:
                results[i].error = err
            return {}, False
        failures: dict[int, RetryableError] = {}
        for i in pending:
            ans = answers.get(str(i))
            if ans is None:  # never answered: as ambiguous as a 503
                failures[i] = ServiceUnavailable("no answer in batch", service=SERVICE)
            elif 200 <= int(ans.get("status", 0)) < 300:
                results[i].contact = cast(Json, ans.get("body"))
            else:
                failure = graph_failure(
                    status=int(ans.get("status", 500)),
                    headers=ans.get("headers") or {},
                    body=ans.get("body"),
                )
                if isinstance(failure, RetryableError):
                    failures[i] = failure
                else:
                    results[i].error = failure
        return failures, False

    async def _batch(self, mailbox: str, requests: list[Json]) -> dict[str, Json]:
        """POST one `$batch` (never retried here: the caller knows what may go again). Graph
        runs up to 4 inner requests of a batch at once against the mailbox, so the batch holds
        that many of the mailbox's concurrency slots, and every inner request counts against
        the mailbox's request window; batches of one mailbox go one at a time."""
        lock = self._batch_locks.setdefault(mailbox, asyncio.Lock())
        slots = min(len(requests), self.options.limits.max_concurrent)
        async with lock:
            taken = 0
            try:
                for _ in range(slots):
                    await self._budget.acquire(mailbox)
                    taken += 1
                # Graph throttles each inner request: the rest count against the window too.
                await self._budget.charge(mailbox, len(requests) - slots)
                ri = self._request(Method.POST, "/$batch", body={"requests": requests})
                resp = await self._send_once(ri)
            finally:
                for _ in range(taken):
                    self._budget.release(mailbox)
        return {str(r.get("id")): r for r in (resp.body or {}).get("responses") or []}
